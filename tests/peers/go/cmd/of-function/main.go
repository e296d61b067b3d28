// An OpenFunction function, written as OpenFunction's own are, on functions-framework-go. Its
// FUNC_CONTEXT (set as in an OpenFunction pod) picks the runtime:
//
//   - Knative: a sync function with a CloudEvent handler, listening on the context's "port";
//     it records each event as the CloudEvents SDK sees it.
//   - Async: an async function, a Dapr app served to daprd over gRPC, whose input is a pub/sub
//     topic; it records each event as the framework hands it over (a Dapr TopicEvent).
//     DAPR_GRPC_PORT names daprd's gRPC port.
//
// Either way each event is appended to the file OFE_RECORD names (JSON, one per line), so a
// test can compare what ofe delivered with what was sent.
package main

import (
	"context"
	"encoding/json"
	"os"
	"sync"

	ofctx "github.com/OpenFunction/functions-framework-go/context"
	"github.com/OpenFunction/functions-framework-go/framework"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"k8s.io/klog/v2"
)

var (
	mu     sync.Mutex
	record *os.File
)

// write appends one event, as JSON, to OFE_RECORD.
func write(event any) error {
	line, err := json.Marshal(event)
	if err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	_, err = record.Write(append(line, '\n'))
	return err
}

// RecordCloudEvent is the sync function.
func RecordCloudEvent(ctx context.Context, ce cloudevents.Event) error {
	return write(ce)
}

// RecordTopicEvent is the async function.
func RecordTopicEvent(ctx ofctx.Context, in []byte) (ofctx.Out, error) {
	e := ctx.GetTopicEvent()
	if e == nil {
		return ctx.ReturnOnInternalError(), nil
	}
	err := write(map[string]any{
		"id": e.ID, "specversion": e.SpecVersion, "type": e.Type, "source": e.Source,
		"subject": e.Subject, "datacontenttype": e.DataContentType, "data": e.Data,
		"topic": e.Topic, "pubsubname": e.PubsubName, "input": string(in),
	})
	if err != nil {
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
	runtime, err := ofctx.GetRuntimeContext()
	if err != nil {
		klog.Exit(err)
	}
	var function any = RecordCloudEvent
	if runtime.GetRuntime() == ofctx.Async {
		function = RecordTopicEvent
	}
	ctx := context.Background()
	fwk, err := framework.NewFramework()
	if err != nil {
		klog.Exit(err)
	}
	if err := fwk.Register(ctx, function); err != nil {
		klog.Exit(err)
	}
	if err := fwk.Start(ctx); err != nil {
		klog.Exit(err)
	}
}
