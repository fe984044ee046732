package ca

import (
	"context"
	"errors"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestParseTokens(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string
		want    map[string]Caller
	}{
		{name: "all kinds", in: "# c\n\naaaaaaaaaaaaaaaa ztunnel n1\nbbbbbbbbbbbbbbbb  waypoint  ns/wp\ncccccccccccccccc workload ns/sa\n",
			want: map[string]Caller{
				"aaaaaaaaaaaaaaaa": {Kind: KindZtunnel, Node: "n1"},
				"bbbbbbbbbbbbbbbb": {Kind: KindWaypoint, Namespace: "ns", Name: "wp"},
				"cccccccccccccccc": {Kind: KindWorkload, Namespace: "ns", Name: "sa"},
			}},
		{name: "short token", in: "short ztunnel n1\n", wantErr: "line 1: token: shorter than 16"},
		{name: "unknown kind", in: "aaaaaaaaaaaaaaaa admin n1\n", wantErr: "line 1: kind: want ztunnel, waypoint or workload"},
		{name: "missing field", in: "\naaaaaaaaaaaaaaaa ztunnel\n", wantErr: "line 2: want"},
		{name: "workload without namespace", in: "aaaaaaaaaaaaaaaa workload sa\n", wantErr: "line 1: workload: want namespace/name"},
		{name: "node with slash", in: "aaaaaaaaaaaaaaaa ztunnel a/b\n", wantErr: "line 1: ztunnel: want a node name"},
		{name: "duplicate", in: "aaaaaaaaaaaaaaaa ztunnel n1\naaaaaaaaaaaaaaaa ztunnel n2\n", wantErr: "line 2: token: already given"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tf, err := ParseTokens([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tf.Len() != len(tt.want) {
				t.Fatalf("%d tokens, want %d", tf.Len(), len(tt.want))
			}
			for tok, want := range tt.want {
				c, err := tf.Authenticate(context.Background(), tok)
				if err != nil || *c != want {
					t.Errorf("%s: %+v %v, want %+v", tok, c, err, want)
				}
			}
			if _, err := tf.Authenticate(context.Background(), "zzzzzzzzzzzzzzzz"); err == nil {
				t.Error("an unknown token was accepted")
			}
		})
	}
}

func TestBearerToken(t *testing.T) {
	for _, tt := range []struct{ auth, want string }{
		{"Bearer abc", "abc"}, {"bearer  abc ", "abc"}, {"Basic abc", ""}, {"Bearer ", ""}, {"abc", ""}, {"", ""},
	} {
		got, err := BearerToken(ctxWith(tt.auth))
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("%q: %q %v, want %q", tt.auth, got, err, tt.want)
		}
	}
}

// reviewer answers TokenReviews for the tokens it knows, as the API server would.
func reviewer(users map[string]authnv1.UserInfo, audiences []string) k8stesting.ReactionFunc {
	return func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if tr.Spec.Token == "api-down" {
			return true, nil, errors.New("connection refused")
		}
		u, ok := users[tr.Spec.Token]
		if !ok {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: false, Error: "invalid bearer token"}
			return true, tr, nil
		}
		tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: u, Audiences: audiences}
		return true, tr, nil
	}
}

func TestTokenReview(t *testing.T) {
	ztPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel-x1", UID: types.UID("uid-1")},
		Spec:       corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: "node-p"},
	}
	sa := func(ns, name string, extra map[string]authnv1.ExtraValue) authnv1.UserInfo {
		return authnv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + name, Extra: extra}
	}
	users := map[string]authnv1.UserInfo{
		"zt-node":      sa("istio-system", "ztunnel", map[string]authnv1.ExtraValue{ExtraNodeName: {"node-a"}, ExtraPodName: {"ztunnel-a"}}),
		"zt-pod":       sa("istio-system", "ztunnel", map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-x1"}, ExtraPodUID: {"uid-1"}}),
		"zt-stale-uid": sa("istio-system", "ztunnel", map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-x1"}, ExtraPodUID: {"uid-0"}}),
		"zt-no-pod":    sa("istio-system", "ztunnel", map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-gone"}}),
		"zt-unbound":   sa("istio-system", "ztunnel", nil),
		"workload":     sa("ns1", "sa-a", nil),
		"user":         {Username: "alice"},
	}
	tests := []struct {
		token     string
		audiences []string // returned by the API server
		want      *Caller
		wantErr   string
	}{
		{token: "zt-node", want: &Caller{Kind: KindZtunnel, Node: "node-a", Namespace: "istio-system", Name: "ztunnel"}},
		{token: "zt-pod", want: &Caller{Kind: KindZtunnel, Node: "node-p", Namespace: "istio-system", Name: "ztunnel"}},
		{token: "zt-stale-uid", wantErr: "metadata.uid uid-1 is not the token's uid-0"},
		{token: "zt-no-pod", wantErr: "ztunnel pod istio-system/ztunnel-gone"},
		{token: "zt-unbound", wantErr: "bound to no pod"},
		{token: "workload", want: &Caller{Kind: KindWorkload, Namespace: "ns1", Name: "sa-a"}},
		{token: "user", wantErr: `"alice" is not a service account`},
		{token: "nobody", wantErr: "invalid bearer token"},
		{token: "api-down", wantErr: "connection refused"},
		{token: "workload", audiences: []string{"kubernetes"}, wantErr: "status.audiences [kubernetes]"},
	}
	for _, tt := range tests {
		t.Run(tt.token+strings.Join(tt.audiences, ","), func(t *testing.T) {
			client := fake.NewClientset(ztPod)
			aud := tt.audiences
			if aud == nil {
				aud = []string{DefaultAudience}
			}
			client.PrependReactor("create", "tokenreviews", reviewer(users, aud))
			a, err := NewTokenReview(TokenReviewOptions{Client: client})
			if err != nil {
				t.Fatal(err)
			}
			c, err := a.Authenticate(context.Background(), tt.token)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *c != *tt.want {
				t.Fatalf("caller %+v, want %+v", c, tt.want)
			}
		})
	}
}

// TestTokenReviewImpersonation: a ztunnel authenticated by TokenReview gets the workloads of its
// node (and its own identity), not another node's.
func TestTokenReviewImpersonation(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", reviewer(map[string]authnv1.UserInfo{
		"zt-a": {Username: "system:serviceaccount:istio-system:ztunnel", Extra: map[string]authnv1.ExtraValue{ExtraNodeName: {"node-a"}}},
	}, []string{DefaultAudience}))
	a, err := NewTokenReview(TokenReviewOptions{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, true)
	f.srv.o.Authenticator = a
	for imp, want := range map[string]bool{
		"spiffe://cluster.local/ns/ns1/sa/sa-a":             true,
		"spiffe://cluster.local/ns/istio-system/sa/ztunnel": true,
		"":                                      true,
		"spiffe://cluster.local/ns/ns1/sa/sa-b": false,
	} {
		csr, _ := csrPEM(t)
		_, err := f.srv.CreateCertificate(ctxWith("Bearer zt-a"), request(t, csr, imp, 0))
		if (err == nil) != want {
			t.Errorf("%q: error %v, want allowed=%v", imp, err, want)
		}
	}
}
