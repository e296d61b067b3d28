// Command argo-events runs Argo Events' own EventSource and Sensor services as plain processes,
// for ofe-bench's side-by-side run (`ofe-bench --peer`).
//
// It does what Argo's `eventsource-service` and `sensor-service` commands do (read the resource
// and the bus config from EVENTSOURCE_OBJECT or SENSOR_OBJECT and EVENTBUS_CONFIG, base64 JSON,
// as Argo's controller passes them to its pods) and calls the same library entry points. The
// one difference: those commands serve metrics on a fixed port (7777), so two of them cannot run
// on one host outside pods; here the address is ARGO_METRICS_ADDR.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"

	"go.uber.org/zap"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/manager/signals"

	"github.com/argoproj/argo-events/pkg/apis/events/v1alpha1"
	"github.com/argoproj/argo-events/pkg/eventsources"
	"github.com/argoproj/argo-events/pkg/metrics"
	"github.com/argoproj/argo-events/pkg/sensors"
	"github.com/argoproj/argo-events/pkg/shared/logging"
	sharedutil "github.com/argoproj/argo-events/pkg/shared/util"
)

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "eventsource" && os.Args[1] != "sensor") {
		fmt.Fprintln(os.Stderr, "usage: argo-events eventsource|sensor (configured by the environment, as Argo's pods are)")
		os.Exit(2)
	}
	logger := logging.NewArgoEventsLogger().Named(os.Args[1])
	decode := func(variable string, into any) {
		encoded, ok := os.LookupEnv(variable)
		if !ok {
			logger.Fatalf("required environment variable '%s' not defined", variable)
		}
		raw, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			logger.Fatalw("cannot decode "+variable, zap.Error(err))
		}
		if err := json.Unmarshal(raw, into); err != nil {
			logger.Fatalw("cannot read "+variable, zap.Error(err))
		}
	}
	bus := &v1alpha1.BusConfig{}
	decode(v1alpha1.EnvVarEventBusConfig, bus)
	subject := os.Getenv(v1alpha1.EnvVarEventBusSubject)
	hostname := os.Getenv("POD_NAME")
	if subject == "" || hostname == "" {
		logger.Fatalf("%s and POD_NAME must be set", v1alpha1.EnvVarEventBusSubject)
	}
	ctx := logging.WithLogger(signals.SetupSignalHandler(), logger)
	metricsAddr := os.Getenv("ARGO_METRICS_ADDR")
	if metricsAddr == "" {
		metricsAddr = "127.0.0.1:0"
	}

	switch os.Args[1] {
	case "eventsource":
		source := &v1alpha1.EventSource{}
		decode(v1alpha1.EnvVarEventSourceObject, source)
		m := metrics.NewMetrics(source.Namespace)
		go m.Run(ctx, metricsAddr)
		adaptor := eventsources.NewEventSourceAdaptor(source, bus, subject, hostname, m)
		if err := adaptor.Start(ctx); err != nil {
			logger.Fatalw("failed to start eventsource server", zap.Error(err))
		}
	case "sensor":
		sensor := &v1alpha1.Sensor{}
		decode(v1alpha1.EnvVarSensorObject, sensor)
		// An HTTP trigger never calls the Kubernetes API; the clients are built (as Argo's
		// command builds them) from KUBECONFIG when it is set, else for a server never contacted.
		restConfig := &rest.Config{Host: "http://127.0.0.1:1"}
		if path := os.Getenv(v1alpha1.EnvVarKubeConfig); path != "" {
			config, err := sharedutil.GetClientConfig(path)
			if err != nil {
				logger.Fatalw("failed to get kubeconfig", zap.Error(err))
			}
			restConfig = config
		}
		m := metrics.NewMetrics(sensor.Namespace)
		go m.Run(ctx, metricsAddr)
		sensorCtx := sensors.NewSensorContext(kubernetes.NewForConfigOrDie(restConfig),
			dynamic.NewForConfigOrDie(restConfig), sensor, bus, subject, hostname, m)
		if err := sensorCtx.Start(ctx); err != nil {
			logger.Fatalw("failed to listen to events", zap.Error(err))
		}
	}
}
