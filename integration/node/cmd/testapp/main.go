// Command testapp is the test node's application image: `testapp serve` answers every HTTP
// request with "<name>: <method> <path>" (with --upstream, JSON with each upstream call's
// status, as the scenarios' fake-service; /status/N answers N, as httpbin), `testapp idle` waits to be stopped (a client pod's
// main process), and invoked as curl (the image's /usr/bin/curl) it
// is the subset of curl the scenarios' READMEs use (-s, -S, -X, -d, -H, -o, -w '%{http_code}',
// -m), exiting with curl's codes (7 refused, 28 timeout, 52 empty reply, 56 reset).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if filepath.Base(os.Args[0]) == "curl" {
		os.Exit(curl(os.Args[1:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "curl" {
		os.Exit(curl(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "idle" { // a client pod's main process: wait to be stopped
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		return
	}
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address to serve HTTP on")
	name := fs.String("name", os.Getenv("APP_NAME"), "name said in every answer")
	var upstreams []string
	fs.Func("upstream", "an upstream URL called on every request (repeatable): the answer is then JSON with each call's status", func(u string) error {
		upstreams = append(upstreams, u)
		return nil
	})
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	fs.Parse(args)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	srv := &http.Server{
		Addr:              *listen,
		ReadHeaderTimeout: 10 * time.Second,
		Handler:           handler(*name, upstreams, client),
	}
	fmt.Fprintf(os.Stderr, "testapp %s serving on %s\n", *name, *listen)
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// handler answers "<name>: <method> <path>"; /status/N answers N (as httpbin); with upstreams
// it calls each and answers JSON naming itself and each call's status (500 when one failed).
func handler(name string, upstreams []string, client *http.Client) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		if code, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			if n, err := strconv.Atoi(code); err == nil && n >= 200 && n < 600 {
				w.WriteHeader(n)
				return
			}
		}
		if len(upstreams) == 0 {
			fmt.Fprintf(w, "%s: %s %s\n", name, r.Method, r.URL.Path)
			return
		}
		type call struct {
			URI  string          `json:"uri"`
			Code int             `json:"code"`
			Body json.RawMessage `json:"body,omitempty"`
		}
		resp := struct {
			Name  string `json:"name"`
			Calls []call `json:"upstream_calls"`
		}{Name: name}
		status := http.StatusOK
		for _, u := range upstreams {
			c := call{URI: u}
			if res, err := client.Get(u); err == nil {
				b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<16))
				res.Body.Close()
				c.Code = res.StatusCode
				if json.Valid(b) {
					c.Body = b
				}
			}
			if c.Code != http.StatusOK {
				status = http.StatusInternalServerError
			}
			resp.Calls = append(resp.Calls, c)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(resp)
	})
}

// curl runs one request as curl does with the given arguments and returns curl's exit code.
func curl(args []string, stdout, stderr io.Writer) int {
	method, data, out, wfmt, url := "", "", "", "", ""
	var headers []string
	silent, showErr := false, false
	maxTime := 30 * time.Second
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch {
		case a == "-s" || a == "--silent":
			silent = true
		case a == "-S" || a == "--show-error":
			showErr = true
		case a == "-sS" || a == "-Ss":
			silent, showErr = true, true
		case a == "-X" || a == "--request":
			method = next()
		case a == "-d" || a == "--data":
			data = next()
		case a == "-H" || a == "--header":
			headers = append(headers, next())
		case a == "-o" || a == "--output":
			out = next()
		case a == "-w" || a == "--write-out":
			wfmt = next()
		case a == "-m" || a == "--max-time":
			d, err := time.ParseDuration(next() + "s")
			if err != nil {
				fmt.Fprintln(stderr, "curl: bad --max-time")
				return 2
			}
			maxTime = d
		case strings.HasPrefix(a, "-"):
			fmt.Fprintf(stderr, "curl: option %s: not supported by this test image\n", a)
			return 2
		default:
			url = a
		}
	}
	if url == "" {
		fmt.Fprintln(stderr, "curl: no URL specified")
		return 2
	}
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	if method == "" {
		method = http.MethodGet
		if data != "" {
			method = http.MethodPost
		}
	}
	req, err := http.NewRequest(method, url, strings.NewReader(data))
	if err != nil {
		fmt.Fprintln(stderr, "curl:", err)
		return 3
	}
	if data != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	c := &http.Client{Timeout: maxTime, Transport: &http.Transport{DisableKeepAlives: true}}
	code, status := 0, 0
	resp, err := c.Do(req)
	if err == nil {
		status = resp.StatusCode
		var w io.Writer = stdout
		if out != "" && out != "-" {
			if out == "/dev/null" {
				w = io.Discard
			} else if f, ferr := os.Create(out); ferr == nil {
				defer f.Close()
				w = f
			}
		}
		_, err = io.Copy(w, resp.Body)
		resp.Body.Close()
	}
	if err != nil {
		code = exitCode(err)
		if !silent || showErr {
			fmt.Fprintf(stderr, "curl: (%d) %v\n", code, err)
		}
	}
	if wfmt != "" {
		fmt.Fprint(stdout, strings.ReplaceAll(strings.ReplaceAll(wfmt, "%{http_code}", fmt.Sprintf("%03d", status)), `\n`, "\n"))
	}
	return code
}

// exitCode maps a request's error to curl's exit code.
func exitCode(err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return 7
	case errors.As(err, &ne) && ne.Timeout():
		return 28
	case errors.Is(err, syscall.ECONNRESET):
		return 56
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return 52
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return 6
	}
	return 56
}
