package main

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/ztunnel/identity"
)

func init() { commands["certs"] = runCerts }

const certsUsage = `usage:
  meshctl certs root --dir DIR [--trust-domain cluster.local]
      create the root CA in DIR (root-cert.pem, root-key.pem), or keep the one there
  meshctl certs issue --dir DIR --ns NS --sa SA [--ttl 24h] [--trust-domain TD]
      issue the SVID of spiffe://TD/ns/NS/sa/SA into DIR/NS/SA/{cert-chain.pem,key.pem}
  meshctl certs issue-from-mesh --dir DIR -f FILE|DIR [--ttl 24h] [--trust-domain TD]
      issue one SVID per ServiceAccount in Kubernetes YAML
The trust domain of issue defaults to the root's (its spiffe:// URI SAN), else cluster.local.`

// runCerts is `meshctl certs`: the root CA and the SVID files of local runs (the layout ztunnel's
// --svid-dir reads, see ztunnel/identity/README.md). Exit 0 ok, 2 usage error, 1 failure.
func runCerts(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "root":
			return certsRoot(args[1:], stdout, stderr)
		case "issue":
			return certsIssue(args[1:], stdout, stderr)
		case "issue-from-mesh":
			return certsIssueFromMesh(args[1:], stdout, stderr)
		case "-h", "-help", "--help", "help":
			fmt.Fprintln(stdout, certsUsage)
			return 0
		}
	}
	fmt.Fprintln(stderr, certsUsage)
	return 2
}

// certsCmd is what the subcommands share: the flag set, usage errors and failures.
type certsCmd struct {
	name   string
	fs     *flag.FlagSet
	stderr io.Writer
}

func newCertsCmd(name string, stderr io.Writer) *certsCmd {
	fs := flag.NewFlagSet("meshctl certs "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return &certsCmd{name: name, fs: fs, stderr: stderr}
}

// parse returns -1 when parsing succeeded, else the exit code.
func (c *certsCmd) parse(args []string) int {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if c.fs.NArg() > 0 {
		return c.usage(fmt.Sprintf("unexpected argument %q", c.fs.Arg(0)))
	}
	return -1
}

func (c *certsCmd) usage(msg string) int {
	fmt.Fprintf(c.stderr, "meshctl certs %s: %s\n", c.name, msg)
	return 2
}

func (c *certsCmd) fail(err error) int {
	fmt.Fprintf(c.stderr, "meshctl certs %s: %v\n", c.name, err)
	return 1
}

func (c *certsCmd) required(flags map[string]string) int {
	for _, name := range slices.Sorted(maps.Keys(flags)) {
		if flags[name] == "" {
			return c.usage(name + " is required")
		}
	}
	return -1
}

func certsRoot(args []string, stdout, stderr io.Writer) int {
	c := newCertsCmd("root", stderr)
	dir := c.fs.String("dir", "", "folder of the root CA and the SVIDs (required)")
	tdName := c.fs.String("trust-domain", "cluster.local", "trust domain of the root")
	if code := c.parse(args); code >= 0 {
		return code
	}
	if code := c.required(map[string]string{"--dir": *dir}); code >= 0 {
		return code
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return c.usage(fmt.Sprintf("--trust-domain %q: %v", *tdName, err))
	}
	ca, created, err := pki.LoadOrCreateCA(*dir, td)
	if err != nil {
		return c.fail(err)
	}
	verb := "kept the existing"
	if created {
		verb = "created"
	}
	root := ca.Root()
	fmt.Fprintf(stdout, "%s root CA %s (trust domain %s, serial %s, expires %s)\n", verb,
		filepath.Join(*dir, identity.RootCertFile), td.Name(), root.SerialNumber.Text(16), root.NotAfter.UTC().Format(time.RFC3339))
	return 0
}

// issueFlags are the flags issue and issue-from-mesh share.
type issueFlags struct {
	dir, td *string
	ttl     *time.Duration
}

func addIssueFlags(c *certsCmd) issueFlags {
	return issueFlags{
		dir: c.fs.String("dir", "", "folder of the root CA, where the SVIDs are written (required)"),
		td:  c.fs.String("trust-domain", "", "trust domain of the SVIDs (default: the root's, else cluster.local)"),
		ttl: c.fs.Duration("ttl", pki.DefaultSVIDTTL, "lifetime of the SVIDs"),
	}
}

// loadCA checks the shared flags and loads the CA; a code >= 0 means stop with it.
func (f issueFlags) loadCA(c *certsCmd) (*pki.CA, int) {
	if *f.ttl < time.Second {
		return nil, c.usage(fmt.Sprintf("--ttl must be at least 1s, got %s", *f.ttl))
	}
	td, err := trustDomainFor(*f.dir, *f.td)
	if err != nil {
		return nil, c.usage(err.Error())
	}
	if _, err := os.Stat(filepath.Join(*f.dir, identity.RootCertFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, c.fail(fmt.Errorf("no root CA in %s: run `meshctl certs root --dir %s` first", *f.dir, *f.dir))
	}
	ca, err := pki.LoadCA(*f.dir, td)
	if err != nil {
		if *f.td != "" {
			err = fmt.Errorf("--trust-domain: %w", err)
		}
		return nil, c.fail(err)
	}
	return ca, -1
}

// trustDomainFor is the --trust-domain flag, or the trust domain of the root in dir, or
// cluster.local.
func trustDomainFor(dir, flagValue string) (spiffeid.TrustDomain, error) {
	if flagValue != "" {
		td, err := spiffeid.TrustDomainFromString(flagValue)
		if err != nil {
			return td, fmt.Errorf("--trust-domain %q: %v", flagValue, err)
		}
		return td, nil
	}
	if b, err := os.ReadFile(filepath.Join(dir, identity.RootCertFile)); err == nil {
		for _, root := range pemCertificates(b) {
			if td, ok := pki.RootTrustDomain(root); ok {
				return td, nil
			}
		}
	}
	return spiffeid.RequireTrustDomainFromString("cluster.local"), nil
}

func certsIssue(args []string, stdout, stderr io.Writer) int {
	c := newCertsCmd("issue", stderr)
	f := addIssueFlags(c)
	ns := c.fs.String("ns", "", "namespace of the workload identity (required)")
	sa := c.fs.String("sa", "", "service account of the workload identity (required)")
	if code := c.parse(args); code >= 0 {
		return code
	}
	if code := c.required(map[string]string{"--dir": *f.dir, "--ns": *ns, "--sa": *sa}); code >= 0 {
		return code
	}
	ca, code := f.loadCA(c)
	if code >= 0 {
		return code
	}
	id, err := identity.WorkloadID(ca.TrustDomain(), *ns, *sa)
	if err != nil {
		return c.usage(fmt.Sprintf("--ns %q --sa %q: not a valid identity: %v", *ns, *sa, err))
	}
	if err := issue(ca, *f.dir, id, *f.ttl, stdout); err != nil {
		return c.fail(err)
	}
	return 0
}

func certsIssueFromMesh(args []string, stdout, stderr io.Writer) int {
	c := newCertsCmd("issue-from-mesh", stderr)
	f := addIssueFlags(c)
	file := c.fs.String("f", "", "Kubernetes YAML file, or a folder of them (required)")
	if code := c.parse(args); code >= 0 {
		return code
	}
	if code := c.required(map[string]string{"--dir": *f.dir, "-f": *file}); code >= 0 {
		return code
	}
	accounts, err := serviceAccounts(*file)
	if err != nil {
		return c.fail(fmt.Errorf("-f: %w", err))
	}
	if len(accounts) == 0 {
		return c.fail(fmt.Errorf("-f %s: no ServiceAccount found", *file))
	}
	ca, code := f.loadCA(c)
	if code >= 0 {
		return code
	}
	for _, a := range accounts {
		id, err := identity.WorkloadID(ca.TrustDomain(), a.ns, a.name)
		if err != nil {
			return c.fail(fmt.Errorf("%s: ServiceAccount %s/%s: %w", a.file, a.ns, a.name, err))
		}
		if err := issue(ca, *f.dir, id, *f.ttl, stdout); err != nil {
			return c.fail(err)
		}
	}
	return 0
}

func issue(ca *pki.CA, dir string, id spiffeid.ID, ttl time.Duration, stdout io.Writer) error {
	svid, err := ca.IssueSVID(id, ttl)
	if err != nil {
		return err
	}
	path, err := identity.WriteSVID(dir, svid)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issued %s to %s (expires %s)\n", id, filepath.Dir(path),
		svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	return nil
}

type serviceAccount struct{ file, ns, name string }

// serviceAccounts reads the ServiceAccounts of a YAML file, or of every .yaml, .yml and .json
// file below a folder: sorted by namespace and name, without duplicates. A ServiceAccount
// without a namespace is in "default", as kubectl would create it.
func serviceAccounts(path string) ([]serviceAccount, error) {
	files, err := policies.ConfigFiles(path)
	if err != nil {
		return nil, err
	}
	seen := map[[2]string]bool{}
	var out []serviceAccount
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		docs, errs := policies.SplitDocuments(data, file)
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		for _, d := range docs {
			var obj struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"metadata"`
			}
			if json.Unmarshal(d.JSON, &obj) != nil || obj.Kind != "ServiceAccount" || obj.APIVersion != "v1" {
				continue
			}
			if obj.Metadata.Name == "" {
				return nil, fmt.Errorf("%s: document %d: ServiceAccount without metadata.name", file, d.Origin.Doc)
			}
			if obj.Metadata.Namespace == "" {
				obj.Metadata.Namespace = "default"
			}
			key := [2]string{obj.Metadata.Namespace, obj.Metadata.Name}
			if !seen[key] {
				seen[key] = true
				out = append(out, serviceAccount{file: file, ns: key[0], name: key[1]})
			}
		}
	}
	slices.SortFunc(out, func(a, b serviceAccount) int {
		return strings.Compare(a.ns+"/"+a.name, b.ns+"/"+b.name)
	})
	return out, nil
}

// pemCertificates reads the CERTIFICATE blocks of PEM data.
func pemCertificates(data []byte) []*x509.Certificate {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		if block, data = pem.Decode(data); block == nil {
			return certs
		}
		if cert, err := x509.ParseCertificate(block.Bytes); err == nil && block.Type == "CERTIFICATE" {
			certs = append(certs, cert)
		}
	}
}
