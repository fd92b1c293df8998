package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// testPair is a self-signed certificate for localhost/127.0.0.1.
type testPair struct {
	serial          int64
	certPEM, keyPEM []byte
	cert            *x509.Certificate
}

func newTestPair(t *testing.T, serial int64) testPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "wsidecar test"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testPair{
		serial:  serial,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		cert:    cert,
	}
}

// writeAtomic replaces path the way careful tools do: write aside, rename.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serveEcho runs a plain crypto/tls listener on loopback that echoes lines.
func serveEcho(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// dial opens a verified TLS connection trusting the given pairs.
func dial(t *testing.T, addr string, trust ...testPair) *tls.Conn {
	t.Helper()
	pool := x509.NewCertPool()
	for _, p := range trust {
		pool.AddCert(p.cert)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
		RootCAs:    pool,
		ServerName: "localhost",
		NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func servedSerial(c *tls.Conn) int64 {
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("write on established connection: %v", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}
}

func TestCertReloaderReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	p1, p2 := newTestPair(t, 1001), newTestPair(t, 1002)
	writeAtomic(t, certFile, p1.certPEM)
	writeAtomic(t, keyFile, p1.keyPEM)

	r, err := NewCertReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatalf("NewCertReloader: %v", err)
	}
	addr := serveEcho(t, r.TLSConfig())

	old := dial(t, addr, p1, p2)
	if got := servedSerial(old); got != p1.serial {
		t.Fatalf("first handshake served serial %d, want %d", got, p1.serial)
	}
	st := old.ConnectionState()
	if st.NegotiatedProtocol != "http/1.1" || st.Version < tls.VersionTLS12 {
		t.Fatalf("negotiated %q version %x, want http/1.1 and TLS ≥ 1.2", st.NegotiatedProtocol, st.Version)
	}
	echo(t, old, "before")

	// A mismatched pair on disk: Reload refuses it and keeps serving p1.
	writeAtomic(t, certFile, p2.certPEM)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Fatalf("Reload with mismatched pair: err = %v, want an error naming %s", err, certFile)
	}
	if got := servedSerial(dial(t, addr, p1, p2)); got != p1.serial {
		t.Fatalf("after a failed reload served serial %d, want the old %d", got, p1.serial)
	}

	writeAtomic(t, keyFile, p2.keyPEM)
	if err := r.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := servedSerial(dial(t, addr, p1, p2)); got != p2.serial {
		t.Fatalf("new handshake served serial %d, want the new %d", got, p2.serial)
	}
	echo(t, old, "after") // the established session is untouched
	if got := servedSerial(old); got != p1.serial {
		t.Fatalf("old connection now reports serial %d", got)
	}
}

// TestCertReloaderWatchSymlinkSwap rotates the pair the way a Kubernetes
// secret volume does: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>, and
// the ..data link is swapped atomically.
func TestCertReloaderWatchSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	p1, p2 := newTestPair(t, 2001), newTestPair(t, 2002)
	writeGen := func(name string, p testPair) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		writeAtomic(t, filepath.Join(dir, name, "tls.crt"), p.certPEM)
		writeAtomic(t, filepath.Join(dir, name, "tls.key"), p.keyPEM)
	}
	swapData := func(target string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeGen("..2025_01", p1)
	swapData("..2025_01")
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}

	r, err := NewCertReloader(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), nil)
	if err != nil {
		t.Fatalf("NewCertReloader: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		r.Watch(ctx, 10*time.Millisecond)
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })

	addr := serveEcho(t, r.TLSConfig())
	old := dial(t, addr, p1, p2)
	if got := servedSerial(old); got != p1.serial {
		t.Fatalf("served serial %d, want %d", got, p1.serial)
	}

	writeGen("..2025_02", p2)
	swapData("..2025_02")

	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _ := r.GetCertificate(nil)
		if c.Leaf.SerialNumber.Int64() == p2.serial {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Watch did not pick up the swapped ..data link within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := servedSerial(dial(t, addr, p1, p2)); got != p2.serial {
		t.Fatalf("new handshake served serial %d, want %d", got, p2.serial)
	}
	echo(t, old, "still here")
}

// TestCertReloaderWatchHalfWritten rotates in place, certificate first: Watch
// must keep the old pair through the mismatched moment and take the new one
// once the key lands. Fake time (synctest) makes the ticks deterministic.
func TestCertReloaderWatchHalfWritten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
		p1, p2 := newTestPair(t, 3001), newTestPair(t, 3002)
		writeAtomic(t, certFile, p1.certPEM)
		writeAtomic(t, keyFile, p1.keyPEM)
		var logs lockedBuffer
		r, err := NewCertReloader(certFile, keyFile, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		serial := func() int64 {
			c, _ := r.GetCertificate(nil)
			return c.Leaf.SerialNumber.Int64()
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.Watch(ctx, time.Second)

		// In place (same inode): truncate and rewrite the certificate only.
		if err := os.WriteFile(certFile, p2.certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second) // five ticks of fake time
		synctest.Wait()
		if got := serial(); got != p1.serial {
			t.Fatalf("serving %d with a half-written rotation, want the old %d", got, p1.serial)
		}
		if n := strings.Count(logs.String(), "do not load"); n != 1 {
			t.Fatalf("half-written rotation logged %d times over five ticks, want once:\n%s", n, logs.String())
		}

		if err := os.WriteFile(keyFile, p2.keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := serial(); got != p2.serial {
			t.Fatalf("serving %d after the key landed, want %d", got, p2.serial)
		}

		// Files vanish mid-swap: nothing changes, nothing breaks.
		if err := os.Remove(keyFile); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := serial(); got != p2.serial {
			t.Fatalf("serving %d while the key is missing, want %d", got, p2.serial)
		}
		if n := strings.Count(logs.String(), "unavailable"); n != 1 {
			t.Fatalf("missing key logged %d times over two ticks, want once:\n%s", n, logs.String())
		}
	})
}

// lockedBuffer is a log sink safe for the Watch goroutine and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestNewCertReloaderErrors(t *testing.T) {
	dir := t.TempDir()
	p1, p2 := newTestPair(t, 1), newTestPair(t, 2)
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	c1, k1 := write("c1.pem", p1.certPEM), write("k1.pem", p1.keyPEM)
	k2 := write("k2.pem", p2.keyPEM)
	garbage := write("garbage.pem", []byte("not pem at all"))
	empty := write("empty.pem", nil)
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name      string
		cert, key string
		wantInErr []string
	}{
		{"missing certificate", missing, k1, []string{missing, "no such file"}},
		{"missing key", c1, missing, []string{missing, "no such file"}},
		{"mismatched pair", c1, k2, []string{c1, k2, "does not match"}},
		{"key swapped for certificate", k1, c1, []string{k1, c1}},
		{"garbage certificate", garbage, k1, []string{garbage}},
		{"empty key", c1, empty, []string{empty}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewCertReloader(tt.cert, tt.key, nil)
			if err == nil {
				t.Fatalf("NewCertReloader succeeded (%v), want an error", r)
			}
			for _, want := range tt.wantInErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}
