// Command cert-manager-controller: the certificate controllers of cert-manager, for the test
// cluster. Our own small main over the public API of github.com/cert-manager/cert-manager
// (pkg/controller), because that module's cmd/controller is a separate module the Go proxy
// does not serve and imports internal packages. It runs what a CA or SelfSigned issuer needs:
// the certificates controllers (trigger, key manager, request manager, issuing, readiness,
// revision manager), the CertificateRequest approver, the CA and SelfSigned
// CertificateRequest issuers, and the Issuer / ClusterIssuer controllers. No ACME, Vault,
// Venafi, ingress/gateway shim, webhook or cainjector; no leader election (one replica).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Each of these registers its controller with controllerpkg.Register.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// The Issuer / ClusterIssuer kinds the issuers controllers can set up.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	clusterResourceNamespace := flag.String("cluster-resource-namespace", "cert-manager", "namespace of the Secrets that ClusterIssuers reference")
	workers := flag.Int("workers", 5, "workers per controller")
	klog.InitFlags(nil)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	log := logf.FromContext(ctx)

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: *clusterResourceNamespace,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}

	names := make([]string, 0)
	for n := range controllerpkg.Known() {
		names = append(names, n)
	}
	sort.Strings(names)
	var wg sync.WaitGroup
	for _, n := range names {
		iface, err := controllerpkg.Known()[n](factory)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cert-manager-controller: controller %s: %v\n", n, err)
			os.Exit(1)
		}
		wg.Add(1)
		go func(n string, c controllerpkg.Interface) {
			defer wg.Done()
			log.Info("starting controller", "controller", n)
			if err := c.Run(*workers, ctx); err != nil {
				fmt.Fprintf(os.Stderr, "cert-manager-controller: controller %s: %v\n", n, err)
				os.Exit(1)
			}
		}(n, iface)
	}

	// The informer factories are shared by every Context the factory builds: start them once
	// all controllers have asked for their informers.
	shared, err := factory.Build("informers")
	if err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	log.Info("controllers started", "controllers", names)
	wg.Wait()
	log.Info("control loops exited")
}
