// The official CloudEvents Go SDK on both ends of ofe:
//
//	ce-sdk send URL MODE EVENTS.json   POSTs the events (a JSON array in the SDK's format) to
//	                                   URL in MODE: binary, structured or batch
//	ce-sdk receive PORT FILE           receives events on 127.0.0.1:PORT and appends each, as
//	                                   the SDK decoded it, to FILE (JSON, one per line)
//	ce-sdk receive-batch PORT FILE     the same for requests of any mode, batches included
//	                                   (the SDK's NewEventsFromHTTPRequest); each event is one
//	                                   line, with the size of the request it came in as
//	                                   "batchsize"
//	ce-sdk kafka-read BROKERS TOPIC N  reads N records of TOPIC with the SDK's Kafka binding
//	                                   and prints each event it decodes (JSON, one per line)
//	ce-sdk kafka-write BROKERS TOPIC EVENTS.json
//	                                   writes the events as Kafka records in binary mode
//
// Every event is encoded and decoded by the SDK itself; the test compares the JSON.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ce-sdk: "+format+"\n", args...)
	os.Exit(1)
}

func readEvents(path string) []event.Event {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	var events []event.Event
	if err := json.Unmarshal(data, &events); err != nil {
		fail("%s: %v", path, err)
	}
	return events
}

func send(url, mode string, events []event.Event) {
	ctx := context.Background()
	if mode == "batch" {
		// A batch is a JSON array of structured events (the SDK's own encoding of each).
		body, err := json.Marshal(events)
		if err != nil {
			fail("%v", err)
		}
		resp, err := http.Post(url, "application/cloudevents-batch+json", bytes.NewReader(body))
		if err != nil {
			fail("batch: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			fail("batch: HTTP %d", resp.StatusCode)
		}
		return
	}
	client, err := cloudevents.NewClientHTTP(cloudevents.WithTarget(url))
	if err != nil {
		fail("%v", err)
	}
	for _, e := range events {
		sendCtx := ctx
		if mode == "structured" {
			sendCtx = binding.WithForceStructured(ctx)
		} else {
			sendCtx = binding.WithForceBinary(ctx)
		}
		if result := client.Send(sendCtx, e); !cloudevents.IsACK(result) {
			fail("send %s: %v", e.ID(), result)
		}
	}
}

func receive(port int, path string) {
	out, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fail("%v", err)
	}
	var mu sync.Mutex
	protocol, err := cehttp.New(cehttp.WithPort(port))
	if err != nil {
		fail("%v", err)
	}
	client, err := cloudevents.NewClient(protocol)
	if err != nil {
		fail("%v", err)
	}
	err = client.StartReceiver(context.Background(), func(e event.Event) {
		line, _ := json.Marshal(e)
		mu.Lock()
		defer mu.Unlock()
		out.Write(append(line, '\n'))
	})
	if err != nil {
		fail("%v", err)
	}
}

func receiveBatch(port int, path string) {
	out, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fail("%v", err)
	}
	var mu sync.Mutex
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		events, err := cehttp.NewEventsFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range events {
			line, _ := json.Marshal(map[string]any{"event": e, "batchsize": len(events)})
			out.Write(append(line, '\n'))
		}
		w.WriteHeader(http.StatusOK)
	})
	if err := http.ListenAndServe(fmt.Sprintf("127.0.0.1:%d", port), handler); err != nil {
		fail("%v", err)
	}
}

func saramaConfig() *sarama.Config {
	config := sarama.NewConfig()
	config.Version = sarama.V3_6_0_0
	config.Consumer.Offsets.Initial = sarama.OffsetOldest
	config.Producer.Return.Successes = true
	config.Producer.RequiredAcks = sarama.WaitForAll
	return config
}

func kafkaRead(brokers, topic string, n int) {
	consumer, err := sarama.NewConsumer([]string{brokers}, saramaConfig())
	if err != nil {
		fail("%v", err)
	}
	partitions, err := consumer.Partitions(topic)
	if err != nil {
		fail("%v", err)
	}
	lines := make(chan []byte)
	for _, p := range partitions {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			fail("%v", err)
		}
		go func() {
			for m := range pc.Messages() {
				e, err := binding.ToEvent(context.Background(), kafka_sarama.NewMessageFromConsumerMessage(m))
				if err != nil {
					fail("record %d/%d is not a CloudEvent: %v", m.Partition, m.Offset, err)
				}
				line, _ := json.Marshal(e)
				lines <- line
			}
		}()
	}
	deadline := time.After(60 * time.Second)
	for i := 0; i < n; i++ {
		select {
		case line := <-lines:
			fmt.Println(string(line))
		case <-deadline:
			fail("only %d of %d records in 60 s", i, n)
		}
	}
}

func kafkaWrite(brokers, topic string, events []event.Event) {
	sender, err := kafka_sarama.NewSender([]string{brokers}, saramaConfig(), topic)
	if err != nil {
		fail("%v", err)
	}
	defer sender.Close(context.Background())
	client, err := cloudevents.NewClient(sender, cloudevents.WithTimeNow(), cloudevents.WithUUIDs())
	if err != nil {
		fail("%v", err)
	}
	for _, e := range events {
		ctx := binding.WithForceBinary(context.Background())
		if result := client.Send(ctx, e); !cloudevents.IsACK(result) {
			fail("send %s: %v", e.ID(), result)
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: see the comment at the top of main.go")
	}
	switch args := os.Args[2:]; os.Args[1] {
	case "send":
		send(args[0], args[1], readEvents(args[2]))
	case "receive":
		port, err := strconv.Atoi(args[0])
		if err != nil {
			fail("port: %v", err)
		}
		receive(port, args[1])
	case "receive-batch":
		port, err := strconv.Atoi(args[0])
		if err != nil {
			fail("port: %v", err)
		}
		receiveBatch(port, args[1])
	case "kafka-read":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			fail("count: %v", err)
		}
		kafkaRead(args[0], args[1], n)
	case "kafka-write":
		kafkaWrite(args[0], args[1], readEvents(args[2]))
	default:
		fail("unknown command %s", os.Args[1])
	}
}
