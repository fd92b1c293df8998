package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// CertReloader serves the wss:// listener's certificate and swaps in a new
// pair when the files change, without dropping connections: established TLS
// sessions keep the certificate they shook hands with, new handshakes get
// the new one.
//
// It reloads on demand (Reload, for SIGHUP) and by polling (Watch), because
// cert-manager and Kubernetes secret volumes rotate files in place, often by
// swapping a "..data" symlink; inotify on the file names misses that, a stat
// through the symlinks does not.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	cert atomic.Pointer[tls.Certificate] // read by every handshake

	mu      sync.Mutex // serialises loads; guards the fields below
	stamp   pairStamp  // the files as they were when cert was read
	bad     pairStamp  // the last files that failed to load, so Watch logs them once
	lastErr string     // the last stat error Watch logged, likewise
}

// pairStamp identifies the content of both files cheaply: device, inode, size
// and mtime (os.SameFile compares device and inode portably).
type pairStamp struct{ cert, key os.FileInfo }

func (s pairStamp) equal(o pairStamp) bool {
	return sameStat(s.cert, o.cert) && sameStat(s.key, o.key)
}

func sameStat(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) &&
		a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// NewCertReloader loads the pair now and fails with an error naming the file
// when a file is missing or unreadable, or naming both when they are not a
// pair. logger may be nil.
func NewCertReloader(certFile, keyFile string, logger *slog.Logger) (*CertReloader, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &CertReloader{certFile: certFile, keyFile: keyFile, log: logger}
	cert, st, err := c.read()
	if err != nil {
		return nil, err
	}
	c.install(cert, st)
	return c, nil
}

// GetCertificate returns the current certificate; it is the tls.Config hook.
func (c *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert := c.cert.Load(); cert != nil {
		return cert, nil
	}
	return nil, errNoCert
}

// Reload reads the pair again and installs it. If the new files are missing
// or not a valid pair, the current certificate stays in service and the
// error says why.
func (c *CertReloader) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cert, st, err := c.read()
	if err != nil {
		return fmt.Errorf("reload TLS certificate (keeping the current one): %w", err)
	}
	c.install(cert, st)
	return nil
}

// Watch polls both files every interval (≤ 0: 10s) until ctx is done and
// reloads when either changed and together they form a valid pair. A rotation
// caught half-way (new certificate, old key; or a file briefly missing during
// a symlink swap) keeps the current pair and is retried on the next tick,
// logged once per state.
func (c *CertReloader) Watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = 10 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.poll()
		}
	}
}

// poll is one Watch tick.
func (c *CertReloader) poll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.statPair()
	if err != nil {
		if msg := err.Error(); msg != c.lastErr {
			c.lastErr = msg
			c.log.Warn("TLS certificate files unavailable; keeping the current certificate", "err", err)
		}
		return
	}
	c.lastErr = ""
	if st.equal(c.stamp) || st.equal(c.bad) {
		return
	}
	cert, st, err := c.read()
	if err != nil {
		// Most often the moment between the certificate and the key being
		// written; the next change of either file triggers another try.
		c.bad = st
		c.log.Warn("TLS certificate files changed but do not load; keeping the current certificate", "err", err)
		return
	}
	c.install(cert, st)
}

// TLSConfig returns a server config for the listener: TLS 1.2 or later, the
// certificate from this reloader, and ALPN "http/1.1" (the WebSocket
// handshake is HTTP/1.1; RFC 8441 over HTTP/2 is not served).
func (c *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.GetCertificate,
		NextProtos:     []string{"http/1.1"},
	}
}

// statPair stats both files, following symlinks.
func (c *CertReloader) statPair() (pairStamp, error) {
	cf, err := os.Stat(c.certFile)
	if err != nil {
		return pairStamp{}, fmt.Errorf("TLS certificate file: %w", err)
	}
	kf, err := os.Stat(c.keyFile)
	if err != nil {
		return pairStamp{}, fmt.Errorf("TLS key file: %w", err)
	}
	return pairStamp{cert: cf, key: kf}, nil
}

// read stats then reads and parses the pair. The stamp is taken before the
// read, so a change racing the read shows up as a new stamp on the next poll
// rather than being missed. On a parse error the stamp is still returned.
func (c *CertReloader) read() (*tls.Certificate, pairStamp, error) {
	st, err := c.statPair()
	if err != nil {
		return nil, pairStamp{}, err
	}
	certPEM, err := os.ReadFile(c.certFile)
	if err != nil {
		return nil, st, fmt.Errorf("TLS certificate file: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyFile)
	if err != nil {
		return nil, st, fmt.Errorf("TLS key file: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, st, fmt.Errorf("TLS certificate %q and key %q: %w", c.certFile, c.keyFile, err)
	}
	if cert.Leaf == nil { // GODEBUG x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, st, fmt.Errorf("TLS certificate %q: %w", c.certFile, err)
		}
	}
	return &cert, st, nil
}

// install puts cert in service. c.mu must be held (or c not yet shared).
func (c *CertReloader) install(cert *tls.Certificate, st pairStamp) {
	c.cert.Store(cert)
	c.stamp, c.bad = st, pairStamp{}
	leaf := cert.Leaf
	attrs := []any{
		"cert_file", c.certFile,
		"serial", leaf.SerialNumber.Text(16),
		"subject", leaf.Subject.String(),
		"dns_names", leaf.DNSNames,
		"not_after", leaf.NotAfter,
	}
	if time.Now().After(leaf.NotAfter) {
		c.log.Warn("TLS certificate loaded but already expired", attrs...)
		return
	}
	c.log.Info("TLS certificate loaded", attrs...)
}

// errNoCert fails the handshake of a CertReloader not made by
// NewCertReloader instead of handing crypto/tls a nil certificate.
var errNoCert = errors.New("no TLS certificate loaded")
