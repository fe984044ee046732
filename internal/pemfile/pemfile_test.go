package pemfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseCerts(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "a"}, NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	cert := Block("CERTIFICATE", der)
	for _, tc := range []struct {
		name  string
		in    []byte
		certs int
		err   string
	}{
		{"two certificates, a key between them skipped", append(append(append([]byte{}, cert...), Block("PRIVATE KEY", keyDER)...), cert...), 2, ""},
		{"no block", []byte("not PEM"), 0, "no PEM CERTIFICATE block"},
		{"only a key", Block("PRIVATE KEY", keyDER), 0, "no PEM CERTIFICATE block"},
		{"a broken certificate", Block("CERTIFICATE", []byte{1, 2, 3}), 0, "x509"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCerts(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(got) != tc.certs {
				t.Fatalf("%d certificates, %v", len(got), err)
			}
			if !PublicKeyEqual(got[0].PublicKey, key.Public()) {
				t.Error("the parsed certificate's key differs")
			}
		})
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key.pem")
	for _, data := range []string{"first", "second"} {
		if err := WriteAtomic(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != data {
			t.Fatalf("read %q, %v; want %q", got, err, data)
		}
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files left in the folder, want only the written one", len(entries))
	}
	if err := WriteAtomic(filepath.Join(dir, "missing", "x"), nil, 0o600); err == nil {
		t.Error("writing into a missing folder succeeded")
	}
}
