// Command cert-manager-webhook: cert-manager's admission webhook (validation and the
// CertificateRequest identity mutation), for the test cluster. Our own small main over
// github.com/cert-manager/cert-manager v1.21.2's internal/webhook (NewCertManagerWebhookServer:
// the admission chain of a release, i.e. the CertificateRequest identity and approval plugins
// and resourcevalidation, cert-manager's validation of every cert-manager.io and
// acme.cert-manager.io resource). That wiring lives in internal/ packages and the module's
// cmd/webhook is a separate module the Go proxy does not serve (404), so this file is not
// built where it lies: build.sh places it as the package
// github.com/cert-manager/cert-manager/srop-cmwebhook inside a build-time view of the module
// (a folder of symlinks to the module cache's copy plus this file, used through a `replace` in
// a generated go.mod), where importing cert-manager's internal packages is legal. `go build
// -overlay` cannot do it: the go command refuses overlays of files beneath GOMODCACHE.
//
// It serves TLS from the certificate files it is given (the harness makes them; their CA is
// the caBundle of the webhook configurations), no metrics, no pprof, and logs every admission
// decision (operation, resource, namespace/name, allowed or the error) so a check can show
// which objects it saw.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"

	"github.com/cert-manager/cert-manager/internal/apis/config/shared"
	config "github.com/cert-manager/cert-manager/internal/apis/config/webhook"
	cmwebhook "github.com/cert-manager/cert-manager/internal/webhook"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/webhook/admission"
	"github.com/cert-manager/cert-manager/pkg/webhook/server"
)

func main() {
	// Our own flag set: controller-runtime, linked in, registers --kubeconfig on the global one.
	fs := flag.NewFlagSet("cert-manager-webhook", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server (for SubjectAccessReviews and discovery)")
	securePort := fs.Int("secure-port", 6443, "TLS port of /validate and /mutate (every interface)")
	healthzPort := fs.Int("healthz-port", 6080, "plain HTTP port of /healthz and /livez (every interface)")
	certFile := fs.String("tls-cert-file", "", "serving certificate (PEM)")
	keyFile := fs.String("tls-private-key-file", "", "serving key (PEM)")
	klog.InitFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if *certFile == "" || *keyFile == "" {
		fmt.Fprintln(os.Stderr, "cert-manager-webhook: --tls-cert-file and --tls-private-key-file are required")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "webhook")
	log := logf.FromContext(ctx)

	srv, err := cmwebhook.NewCertManagerWebhookServer(log, config.WebhookConfiguration{
		SecurePort:           int32(*securePort),
		HealthzPort:          int32(*healthzPort),
		KubeConfig:           *kubeconfig,
		TLSConfig:            shared.TLSConfig{Filesystem: shared.FilesystemServingConfig{CertFile: *certFile, KeyFile: *keyFile}},
		MetricsListenAddress: "0", // off
	}, func(s *server.Server) {
		s.ValidationWebhook = logged{s.ValidationWebhook, s.MutationWebhook, log.WithName("admission")}
		s.MutationWebhook = s.ValidationWebhook.(logged)
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-webhook: %v\n", err)
		os.Exit(1)
	}
	log.Info("serving", "securePort", *securePort, "healthzPort", *healthzPort)
	if err := srv.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-webhook: %v\n", err)
		os.Exit(1)
	}
	log.Info("stopped")
}

// logged passes each request to cert-manager's admission chain and logs the outcome.
type logged struct {
	v   admission.ValidationInterface
	m   admission.MutationInterface
	log logr.Logger
}

func (l logged) Handles(op admissionv1.Operation) bool { return l.v.Handles(op) }

func (l logged) Validate(ctx context.Context, req admissionv1.AdmissionRequest, oldObj, obj runtime.Object) ([]string, error) {
	warnings, err := l.v.Validate(ctx, req, oldObj, obj)
	l.record("validate", req, err)
	return warnings, err
}

func (l logged) Mutate(ctx context.Context, req admissionv1.AdmissionRequest, obj *unstructured.Unstructured) error {
	err := l.m.Mutate(ctx, req, obj)
	l.record("mutate", req, err)
	return err
}

func (l logged) record(what string, req admissionv1.AdmissionRequest, err error) {
	kv := []any{"operation", req.Operation, "group", req.Resource.Group, "resource", req.Resource.Resource,
		"subResource", req.SubResource, "namespace", req.Namespace, "name", req.Name, "user", req.UserInfo.Username, "dryRun", req.DryRun != nil && *req.DryRun}
	if err != nil {
		l.log.Info(what+" denied", append(kv, "error", err.Error())...)
		return
	}
	l.log.Info(what+" allowed", kv...)
}
