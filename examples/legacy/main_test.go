package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestRun starts the real command: configuration from the environment,
// periodic notices on the SSE feed, and a clean stop on cancel even while a
// stream is open (streams end with the base context, so Shutdown is not
// left waiting for them).
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := map[string]string{"LEGACY_ADDR": "127.0.0.1:0", "NOTICE_EVERY": "20ms", "WS_URL": "ws://from-env/ws"}
	outR, outW := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, func(k string) string { return env[k] }, outW, &stderr)
		outW.Close()
	}()

	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("no listening line: %v (stderr: %s)", err, stderr.String())
	}
	_, base, _ := strings.Cut(strings.TrimSpace(line), "listening on ")
	go io.Copy(io.Discard, outR)

	resp, err := http.Get(base + "/config.js")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(js), "ws://from-env/ws") {
		t.Errorf("config.js = %s; want WS_URL from the environment", js)
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	req.Header.Set("Last-Event-ID", "0")
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	sc := bufio.NewScanner(stream.Body)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "data: ") {
	}
	if !strings.Contains(sc.Text(), `"type":"notice"`) {
		t.Fatalf("first periodic event = %q; want a notice", sc.Text())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run = %v; want nil after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return within 5s of cancel with an SSE stream open")
	}
}

func TestRunBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"bad NOTICE_EVERY", nil, map[string]string{"NOTICE_EVERY": "often"}},
		{"unknown flag", []string{"-nope"}, nil},
		{"unusable address", []string{"-addr", "127.0.0.1:99999"}, nil},
	} {
		err := run(context.Background(), tc.args, func(k string) string { return tc.env[k] }, io.Discard, io.Discard)
		if err == nil {
			t.Errorf("%s: run succeeded; want an error", tc.name)
		}
	}
}

// TestSignatureVector pins the scheme to a value computed independently
// (Python's hmac), so the sidecar's signer can be checked against it too:
// secret "s3cret", X-WS-Timestamp 1700000000, connection "c-42",
// body {"type":"ping","t":1}.
func TestSignatureVector(t *testing.T) {
	const sig = "v1=895e3ad90dd8a06eadb1875e529b9dbbaf543040c7631a37899cda7e95204143"
	now := time.Unix(1700000000, 0)
	body := []byte(`{"type":"ping","t":1}`)
	if err := verifySignature([]byte("s3cret"), sig, "1700000000", "c-42", body, now, time.Minute); err != nil {
		t.Errorf("known-good vector rejected: %v", err)
	}
	if err := verifySignature([]byte("s3cret"), sig, "1700000000", "c-42", body, now.Add(2*time.Minute), time.Minute); err == nil {
		t.Error("vector accepted two minutes later with a one-minute window")
	}
}

func TestNoticesHistoryIsBounded(t *testing.T) {
	n := newNotices(3)
	for _, s := range []string{"a", "b", "c", "d", "e"} {
		n.add(s)
	}
	evs, next, _ := n.since(1)
	if len(evs) != 3 || evs[0].ID != 3 || evs[2].ID != 5 || next != 5 {
		t.Errorf("since(1) = %v, next %d; want ids 3..5 (the kept ones), next 5", evs, next)
	}
	if evs, next, _ := n.since(5); len(evs) != 0 || next != 5 {
		t.Errorf("since(5) = %v, %d; want nothing, 5", evs, next)
	}
	_, _, changed := n.since(5)
	n.add("f")
	select {
	case <-changed:
	default:
		t.Error("add did not wake waiters")
	}
}

// FuzzMessage feeds arbitrary frames to the message webhook: it must never
// panic, and whatever it answers must be something the sidecar can use.
func FuzzMessage(f *testing.F) {
	for _, seed := range []string{
		`{"type":"join","room":"general","nick":"alice"}`,
		`{"type":"say","room":"general","text":"hi"}`,
		`{"type":"ping","t":1.5}`,
		`{"type":"ping","t":1e999}`,
		`{"type":"join","room":"général"}`,
		`[]`, `null`, ``, "\xff\xfe",
	} {
		f.Add([]byte(seed), false)
	}
	f.Add([]byte{0, 1, 2}, true)

	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"delivered":0,"dropped":0}`)
	}))
	defer admin.Close()
	h := newServer(serverConfig{SidecarAdmin: admin.URL}).routes()

	f.Fuzz(func(t *testing.T, body []byte, binary bool) {
		req := httptest.NewRequest(http.MethodPost, "/ws/message", bytes.NewReader(body))
		req.Header.Set("X-WS-Connection-Id", "fuzz")
		req.Header.Set("Content-Type", "text/plain; charset=utf-8")
		if binary {
			req.Header.Set("Content-Type", "application/octet-stream")
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		ctype, _, _ := mime.ParseMediaType(rec.Header().Get("Content-Type"))
		out := rec.Body.Bytes()
		switch {
		case rec.Code == http.StatusNoContent:
			if len(out) != 0 {
				t.Fatalf("204 with a body %q", out)
			}
		case binary:
			if rec.Code != http.StatusOK || !bytes.Equal(out, body) {
				t.Fatalf("binary frame answered %d %q", rec.Code, out)
			}
		case rec.Code == http.StatusOK && ctype == actionsType:
			var doc struct{ Frames []struct{ Text string } }
			if err := json.Unmarshal(out, &doc); err != nil {
				t.Fatalf("actions document %q: %v", out, err)
			}
			for _, fr := range doc.Frames {
				if !json.Valid([]byte(fr.Text)) {
					t.Fatalf("frame %q is not JSON", fr.Text)
				}
			}
		case (rec.Code == http.StatusOK || rec.Code == http.StatusBadRequest) && ctype == "application/json":
			if !json.Valid(out) {
				t.Fatalf("%d reply %q is not JSON", rec.Code, out)
			}
		default:
			t.Fatalf("unexpected reply %d %q %q", rec.Code, ctype, out)
		}
	})
}
