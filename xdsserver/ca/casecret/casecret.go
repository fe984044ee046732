// Package casecret keeps the mesh's CA in Kubernetes Secrets as istiod does: the plugged-in Secret cacerts when it exists, else the self-signed root of istio-ca-secret, generated and stored there at first start.
package casecret

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/goambient/goambient/xdsserver/ca/pki"
)

// Istio's names (security/pkg/pki/ca/ca.go).
const (
	// SelfSignedSecret holds the self-signed root istiod generates (CASecret).
	SelfSignedSecret = "istio-ca-secret"
	// PluggedInSecret holds a CA the user brings (CACertsSecret), often an intermediate.
	PluggedInSecret = "cacerts"
	// SecretType is the type of the Secret istiod creates.
	SecretType corev1.SecretType = "istio.io/ca-root"

	CACertKey    = "ca-cert.pem"    // the signing certificate
	CAKeyKey     = "ca-key.pem"     // its key
	CertChainKey = "cert-chain.pem" // the intermediates up to the root (plugged in)
	RootCertKey  = "root-cert.pem"  // the root
	PrivateKey   = "key.pem"        // empty in istio-ca-secret, as istiod writes it
)

// Options say where the Secrets are and what the CA issues.
type Options struct {
	Client      kubernetes.Interface
	Namespace   string // istio-system when empty
	TrustDomain spiffeid.TrustDomain
	CAOptions   []pki.CAOption // for a generated root (its lifetime, a clock)
	Logger      *slog.Logger
}

// Result is the CA and where it came from.
type Result struct {
	CA      *pki.CA
	Secret  string // the Secret it was read from or written to
	Created bool   // generated at this start
}

// Load returns the CA of the Secret cacerts when it exists (istiod's plugged-in CA), else of
// istio-ca-secret, which is created with a new self-signed root when it does not exist. When
// another replica creates it first, that one is used. A Secret that exists but holds no
// valid CA is an error: the mesh's root is never replaced silently.
func Load(ctx context.Context, o Options) (*Result, error) {
	if o.Client == nil {
		return nil, errors.New("casecret: no Kubernetes client")
	}
	if o.Namespace == "" {
		o.Namespace = "istio-system"
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	secrets := o.Client.CoreV1().Secrets(o.Namespace)
	for _, name := range []string{PluggedInSecret, SelfSignedSecret} {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("casecret: Secret %s/%s: %w", o.Namespace, name, err)
		}
		ca, err := fromSecret(s, o)
		if err != nil {
			return nil, err
		}
		log.Info("CA loaded from a Secret", "secret", o.Namespace+"/"+name)
		return &Result{CA: ca, Secret: name}, nil
	}
	ca, err := pki.NewCA(o.TrustDomain, o.CAOptions...)
	if err != nil {
		return nil, fmt.Errorf("casecret: %w", err)
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return nil, err
	}
	// As istiod's BuildSecret: the root as both ca-cert.pem and root-cert.pem, no workload
	// certificate.
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecret, Namespace: o.Namespace},
		Type:       SecretType,
		Data:       map[string][]byte{CACertKey: certPEM, CAKeyKey: keyPEM, RootCertKey: certPEM, CertChainKey: {}, PrivateKey: {}},
	}
	_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) { // another replica was first
		if s, err = secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{}); err != nil {
			return nil, fmt.Errorf("casecret: Secret %s/%s: %w", o.Namespace, SelfSignedSecret, err)
		}
		ca, err := fromSecret(s, o)
		if err != nil {
			return nil, err
		}
		return &Result{CA: ca, Secret: SelfSignedSecret}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("casecret: creating Secret %s/%s: %w", o.Namespace, SelfSignedSecret, err)
	}
	log.Info("self-signed root generated and stored", "secret", o.Namespace+"/"+SelfSignedSecret, "expires", ca.Root().NotAfter)
	return &Result{CA: ca, Secret: SelfSignedSecret, Created: true}, nil
}

func fromSecret(s *corev1.Secret, o Options) (*pki.CA, error) {
	ca, err := pki.FromPEM(o.TrustDomain, s.Data[CACertKey], s.Data[CAKeyKey], s.Data[CertChainKey], s.Data[RootCertKey], o.CAOptions...)
	if err != nil {
		return nil, fmt.Errorf("casecret: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return ca, nil
}
