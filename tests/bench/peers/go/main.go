// Command go-gateway is the Go peer of the tutti benchmark: an HTTP fan-out
// gateway written the way a Go service usually is, with net/http,
// errgroup.WithContext and context.WithTimeout.
//
// Usage: go-gateway --config FILE
//
// FILE is the bench config shared by every gateway of the benchmark:
//
//	{"port": 9480, "workers": 1, "deadline_ms": 1000,
//	 "calls": [{"name": "c0", "url": "http://127.0.0.1:9301/item.json"},
//	           {"name": "c1", "url": "h2c://127.0.0.1:9311/item.json"}]}
//
// GET /fan calls every URL at once and responds with 200 and
// {"c0": <body>, ...}. The first failed call ends the request with 502
// {"error": {"call", "kind", "status"}} and cancels the other calls. When
// deadline_ms passes first, the answer is 504 {"error": {"kind":
// "deadline"}}.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/sync/errgroup"
)

// benchConfig is the bench config file.
type benchConfig struct {
	Port       int          `json:"port"`
	Workers    int          `json:"workers"`
	DeadlineMs int          `json:"deadline_ms"`
	Calls      []callConfig `json:"calls"`
}

// callConfig is one downstream call of GET /fan.
type callConfig struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// call is a callConfig resolved for sending: the URL that net/http accepts
// and the client whose transport speaks the call's protocol.
type call struct {
	name   string
	url    string
	client *http.Client
	// keyPrefix is the JSON-encoded name and a colon, written before the
	// call's body in the merged response.
	keyPrefix []byte
}

// callError is the failure of one call, sent as a 502 body.
type callError struct {
	call   string
	kind   string // "connect", "status" or "bad_response"
	status int    // the downstream status for kind "status", else 0
}

func (e *callError) Error() string {
	return fmt.Sprintf("call %s failed: %s (status %d)", e.call, e.kind,
		e.status)
}

// errDeadline is returned by a call that was still running when the
// request's deadline passed.
var errDeadline = errors.New("deadline passed")

type gateway struct {
	calls    []call
	deadline time.Duration
}

func main() {
	configPath := flag.String("config", "", "bench config file (JSON)")
	flag.Parse()
	if *configPath == "" {
		fmt.Fprintln(os.Stderr, "go-gateway: missing --config FILE")
		os.Exit(2)
	}

	cfg, err := loadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-gateway: %v\n", err)
		os.Exit(2)
	}
	runtime.GOMAXPROCS(cfg.Workers)

	gw, err := newGateway(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-gateway: %v\n", err)
		os.Exit(2)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/fan", gw.serveFan)
	server := &http.Server{
		Addr:              fmt.Sprintf("127.0.0.1:%d", cfg.Port),
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	err = server.ListenAndServe()
	fmt.Fprintf(os.Stderr, "go-gateway: %v\n", err)
	os.Exit(1)
}

// loadConfig reads and checks the bench config at path.
func loadConfig(path string) (*benchConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := &benchConfig{Workers: 1}
	err = json.Unmarshal(data, cfg)
	if err != nil {
		return nil, fmt.Errorf("invalid config %s: %w", path, err)
	}
	if cfg.Port <= 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("invalid port %d in %s", cfg.Port, path)
	}
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("invalid workers %d in %s", cfg.Workers, path)
	}
	if cfg.DeadlineMs < 1 {
		return nil, fmt.Errorf("invalid deadline_ms %d in %s", cfg.DeadlineMs,
			path)
	}
	if len(cfg.Calls) == 0 {
		return nil, fmt.Errorf("no calls in %s", path)
	}
	return cfg, nil
}

// newH1Client returns the shared client for http:// calls: HTTP/1.1 with a
// keep-alive pool large enough that the benchmark's connection counts
// never close idle connections for lack of room.
func newH1Client() *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:               nil,
		DialContext:         dialer.DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{Transport: transport}
}

// newH2CClient returns the shared client for h2c:// calls: HTTP/2 with
// prior knowledge over cleartext TCP. http2.Transport dials through
// DialTLSContext for every connection, so a plain dial there gives h2c.
// It opens another connection when a connection's
// SETTINGS_MAX_CONCURRENT_STREAMS is used up.
func newH2CClient() *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	transport := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string,
			_ *tls.Config) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		DisableCompression: true,
	}
	return &http.Client{Transport: transport}
}

func newGateway(cfg *benchConfig) (*gateway, error) {
	h1 := newH1Client()
	h2c := newH2CClient()
	gw := &gateway{deadline: time.Duration(cfg.DeadlineMs) * time.Millisecond}

	for _, c := range cfg.Calls {
		key, err := json.Marshal(c.Name)
		if err != nil {
			return nil, err
		}
		resolved := call{name: c.Name, keyPrefix: append(key, ':')}
		switch {
		case strings.HasPrefix(c.URL, "http://"):
			resolved.url = c.URL
			resolved.client = h1
		case strings.HasPrefix(c.URL, "h2c://"):
			resolved.url = "http://" + strings.TrimPrefix(c.URL, "h2c://")
			resolved.client = h2c
		default:
			return nil, fmt.Errorf(
				"call %s: unsupported URL %q (expected http:// or h2c://)",
				c.Name, c.URL)
		}
		gw.calls = append(gw.calls, resolved)
	}
	return gw, nil
}

func (gw *gateway) serveFan(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeJSON(w, http.StatusMethodNotAllowed,
			[]byte(`{"error":{"kind":"method"}}`))
		return
	}

	// The deadline context ends with the request too, so a client that
	// disconnects cancels the calls.
	deadlineCtx, cancel := context.WithTimeout(r.Context(), gw.deadline)
	defer cancel()
	group, groupCtx := errgroup.WithContext(deadlineCtx)

	bodies := make([]json.RawMessage, len(gw.calls))
	for i := range gw.calls {
		i := i
		group.Go(func() error {
			body, err := gw.calls[i].fetch(groupCtx)
			if err != nil {
				if deadlineCtx.Err() == context.DeadlineExceeded {
					return errDeadline
				}
				return err
			}
			bodies[i] = body
			return nil
		})
	}

	// The first error cancels groupCtx, and net/http then aborts the
	// other calls (h1: closes the connection, h2: RST_STREAM), so Wait
	// returns right after the first failure.
	err := group.Wait()
	if err != nil {
		writeFailure(w, err)
		return
	}

	var out bytes.Buffer
	out.WriteByte('{')
	for i := range gw.calls {
		if i > 0 {
			out.WriteByte(',')
		}
		out.Write(gw.calls[i].keyPrefix)
		out.Write(bodies[i])
	}
	out.WriteByte('}')
	writeJSON(w, http.StatusOK, out.Bytes())
}

// fetch sends the call's GET and returns its body once it is known to be
// JSON. Errors are *callError, or the context's error once ctx ends.
func (c *call) fetch(ctx context.Context) (json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &callError{call: c.name, kind: "connect"}
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, &callError{call: c.name, kind: "status",
			status: resp.StatusCode}
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &callError{call: c.name, kind: "bad_response"}
	}
	if !json.Valid(body) {
		return nil, &callError{call: c.name, kind: "bad_response"}
	}
	return json.RawMessage(body), nil
}

// writeFailure sends the 502 or 504 body for the error that ended a
// request.
func writeFailure(w http.ResponseWriter, err error) {
	var failed *callError
	switch {
	case errors.As(err, &failed):
		type errorBody struct {
			Call   string `json:"call"`
			Kind   string `json:"kind"`
			Status int    `json:"status,omitempty"`
		}
		body, _ := json.Marshal(map[string]errorBody{
			"error": {Call: failed.call, Kind: failed.kind,
				Status: failed.status},
		})
		writeJSON(w, http.StatusBadGateway, body)
	case errors.Is(err, errDeadline):
		writeJSON(w, http.StatusGatewayTimeout,
			[]byte(`{"error":{"kind":"deadline"}}`))
	default:
		// Only a cancelled request context gets here: the client went
		// away and does not read this response.
		writeJSON(w, http.StatusBadGateway,
			[]byte(`{"error":{"kind":"internal"}}`))
	}
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
