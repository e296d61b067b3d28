// An OpenFunction sync function, written as OpenFunction's own functions are: with
// functions-framework-go, the Knative runtime, and a CloudEvent handler. It records each event
// it receives, as the CloudEvents SDK sees it (JSON, one per line), to the file OFE_RECORD
// names, so a test can compare what ofe delivered with what was sent.
//
// FUNC_CONTEXT configures it as in an OpenFunction pod; its "port" is where it listens.
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

// Record is the function: it appends the event to OFE_RECORD.
func Record(ctx context.Context, ce cloudevents.Event) error {
	line, err := json.Marshal(ce)
	if err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	_, err = record.Write(append(line, '\n'))
	return err
}

func main() {
	var err error
	record, err = os.OpenFile(os.Getenv("OFE_RECORD"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		klog.Exit(err)
	}
	if _, err := ofctx.GetRuntimeContext(); err != nil {
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
