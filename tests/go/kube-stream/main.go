// kube-stream drives a Kubernetes streaming endpoint (kubelet's /exec, /attach and
// /portForward, or a CRI runtime's streaming URL) with client-go's own executors and
// port-forwarder, so the tests exercise exactly what kubectl and the API server use.
//
// Usage:
//
//	kube-stream exec|attach -url URL [-transport spdy|websocket] [-stdin TEXT] [-tty] [-timeout 30s]
//	    Streams a session at URL (kubelet's full URL, query included). With -stdin, TEXT is
//	    sent as stdin, which is then closed; without it there is no stdin stream. The remote
//	    stdout goes to stdout and stderr to stderr (with -tty there is no stderr stream).
//	    Exits with the remote exit code; any other failure prints a message and exits 125.
//	    The streams opened must be the ones the URL asks for: for kubelet, input=1 with
//	    -stdin (else input=0), output=1, and error=1 with tty=0 or error=0 with -tty (tty=1).
//	kube-stream port-forward -url URL -port REMOTE -get PATH [-transport spdy|websocket] [-timeout 30s]
//	    Forwards an ephemeral port on 127.0.0.1 to REMOTE, does one HTTP GET of PATH through
//	    it, prints the status line ("HTTP/1.1 200 OK") and the body, and exits 0 (125 on any
//	    failure). The forwarder's own chatter goes to stderr.
//	kube-stream version
//	    Prints the client-go and apimachinery versions it was built with.
//
// TLS is not verified (kubelet serves a self-signed certificate) and no credentials are sent
// (the kubelet under test allows anonymous requests). No proxy is used: the endpoints are
// local. -timeout bounds the whole run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/utils/exec"
)

// failed is the exit code of every failure that is not the remote command's own exit code
// (as `docker run` uses 125 for its own errors).
const failed = 125

const usage = `usage:
  kube-stream exec|attach -url URL [-transport spdy|websocket] [-stdin TEXT] [-tty] [-timeout 30s]
  kube-stream port-forward -url URL -port REMOTE -get PATH [-transport spdy|websocket] [-timeout 30s]
  kube-stream version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch cmd := os.Args[1]; cmd {
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
	case "version":
		version()
	case "exec", "attach", "port-forward":
		os.Exit(run(cmd, os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "kube-stream: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
}

func version() {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Println("kube-stream (no build info)")
		return
	}
	fmt.Printf("kube-stream %s\n", info.GoVersion)
	for _, m := range info.Deps {
		if m.Path == "k8s.io/client-go" || m.Path == "k8s.io/apimachinery" {
			fmt.Printf("%s %s\n", m.Path, m.Version)
		}
	}
}

// run parses the flags of `cmd` and runs it; the process's exit code.
func run(cmd string, args []string) int {
	fs := flag.NewFlagSet("kube-stream "+cmd, flag.ContinueOnError)
	rawURL := fs.String("url", "", "the streaming URL (required)")
	transport := fs.String("transport", "spdy", "spdy or websocket")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on the whole run")
	stdin := fs.String("stdin", "", "exec/attach: text sent as stdin, then closed (no stdin stream without it)")
	tty := fs.Bool("tty", false, "exec/attach: ask for a terminal (no stderr stream)")
	port := fs.Int("port", 0, "port-forward: the remote port")
	get := fs.String("get", "/", "port-forward: the path to GET through the forward")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *rawURL == "" || fs.NArg() != 0 || (*transport != "spdy" && *transport != "websocket") {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	// Whether -stdin was given at all: an empty text still opens (and closes) stdin.
	withStdin := false
	fs.Visit(func(f *flag.Flag) { withStdin = withStdin || f.Name == "stdin" })

	u, err := url.Parse(*rawURL)
	if err != nil {
		return fail(err)
	}
	config := &rest.Config{
		Host:            u.Scheme + "://" + u.Host,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		// Loopback endpoints: an environment proxy must not get in the way.
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// A backstop for a step that does not watch the context (a dial, a stream close).
	watchdog := time.AfterFunc(*timeout+5*time.Second, func() {
		fmt.Fprintf(os.Stderr, "kube-stream: gave up after %s\n", *timeout)
		os.Exit(failed)
	})
	defer watchdog.Stop()

	if cmd == "port-forward" {
		if *port <= 0 || *port > 65535 {
			fmt.Fprint(os.Stderr, "kube-stream: -port REMOTE is required\n", usage)
			return 2
		}
		return portForward(ctx, config, u, *transport, *port, *get)
	}
	var in io.Reader
	if withStdin {
		in = strings.NewReader(*stdin)
	}
	return stream(ctx, config, u, *transport, in, *tty)
}

// stream runs an exec or attach session (the URL says which) with client-go's executor.
func stream(ctx context.Context, config *rest.Config, u *url.URL, transport string, in io.Reader, tty bool) int {
	var executor remotecommand.Executor
	var err error
	if transport == "websocket" {
		// WebSocket needs GET (RFC 6455); kubectl asks the same way.
		executor, err = remotecommand.NewWebSocketExecutor(config, "GET", u.String())
	} else {
		// kubectl and crictl upgrade with POST.
		executor, err = remotecommand.NewSPDYExecutor(config, "POST", u)
	}
	if err != nil {
		return fail(err)
	}
	opts := remotecommand.StreamOptions{Stdin: in, Stdout: os.Stdout, Tty: tty}
	if !tty {
		opts.Stderr = os.Stderr
	}
	err = executor.StreamWithContext(ctx, opts)
	var exitErr exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exitErr) && exitErr.Exited():
		return exitErr.ExitStatus()
	default:
		return fail(err)
	}
}

// portForward forwards an ephemeral local port to `remote` and GETs `path` through it.
func portForward(ctx context.Context, config *rest.Config, u *url.URL, transport string, remote int, path string) int {
	d, err := dialerFor(config, u, transport)
	if err != nil {
		return fail(err)
	}
	stop := make(chan struct{})
	ready := make(chan struct{})
	fw, err := portforward.NewOnAddresses(d, []string{"127.0.0.1"}, []string{fmt.Sprintf(":%d", remote)}, stop, ready, os.Stderr, os.Stderr)
	if err != nil {
		return fail(err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		return fail(fmt.Errorf("the forward ended before it was ready: %v", err))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	ports, err := fw.GetPorts()
	if err != nil {
		return fail(err)
	}
	code := getThrough(ctx, ports[0].Local, path)
	close(stop)
	select {
	case err := <-done:
		if err != nil && code == 0 {
			return fail(err)
		}
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	return code
}

// dialerFor is the dialer kubectl's port-forward uses for `transport`: SPDY upgraded with
// POST, or SPDY tunnelled through a WebSocket (portforward.k8s.io over v5 tunnelling).
func dialerFor(config *rest.Config, u *url.URL, transport string) (httpstream.Dialer, error) {
	if transport == "websocket" {
		return portforward.NewSPDYOverWebsocketDialer(u, config)
	}
	rt, upgrader, err := spdy.RoundTripperFor(config)
	if err != nil {
		return nil, err
	}
	return spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u), nil
}

// getThrough does one GET of `path` on 127.0.0.1:`port` and prints the status line and body.
func getThrough(ctx context.Context, port uint16, path string) int {
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		return fail(err)
	}
	// One connection, closed after the answer, so the forwarded stream ends with it.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fail(err)
	}
	fmt.Printf("%s %s\n", resp.Proto, resp.Status)
	os.Stdout.Write(body)
	return 0
}

func fail(err error) int {
	fmt.Fprintf(os.Stderr, "kube-stream: %v\n", err)
	return failed
}
