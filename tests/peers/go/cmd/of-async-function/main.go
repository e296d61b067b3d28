// An OpenFunction async function, written as OpenFunction's own are: functions-framework-go's
// Async runtime, a Dapr app whose input is a pub/sub topic (FUNC_CONTEXT's `inputs`), served to
// daprd over gRPC. It records each topic event it receives, as the framework hands it over (a
// Dapr TopicEvent), to the file OFE_RECORD names (JSON, one per line).
//
// FUNC_CONTEXT configures it as in an OpenFunction pod; DAPR_GRPC_PORT names daprd's gRPC port.
package main

import (
	"encoding/json"
	"os"
	"sync"

	ofctx "github.com/OpenFunction/functions-framework-go/context"
	"github.com/OpenFunction/functions-framework-go/framework"
	"k8s.io/klog/v2"

	"context"
)

var (
	mu     sync.Mutex
	record *os.File
)

// Record is the function: it appends the topic event to OFE_RECORD.
func Record(ctx ofctx.Context, in []byte) (ofctx.Out, error) {
	e := ctx.GetTopicEvent()
	if e == nil {
		return ctx.ReturnOnInternalError(), nil
	}
	line, err := json.Marshal(map[string]any{
		"id": e.ID, "specversion": e.SpecVersion, "type": e.Type, "source": e.Source,
		"subject": e.Subject, "datacontenttype": e.DataContentType, "data": e.Data,
		"topic": e.Topic, "pubsubname": e.PubsubName, "input": string(in),
	})
	if err != nil {
		return ctx.ReturnOnInternalError(), err
	}
	mu.Lock()
	defer mu.Unlock()
	if _, err := record.Write(append(line, '\n')); err != nil {
		return ctx.ReturnOnInternalError(), err
	}
	return ctx.ReturnOnSuccess(), nil
}

func main() {
	var err error
	record, err = os.OpenFile(os.Getenv("OFE_RECORD"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		klog.Exit(err)
	}
	ctx := context.Background()
	fwk, err := framework.NewFramework()
	if err != nil {
		klog.Exit(err)
	}
	if err := fwk.Register(ctx, Record); err != nil {
		klog.Exit(err)
	}
	if err := fwk.Start(ctx); err != nil {
		klog.Exit(err)
	}
}
