package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// pusher calls wsidecar's push API on its admin listener.
type pusher struct {
	base   string // e.g. http://127.0.0.1:9090
	token  string // bearer token; empty: none
	client *http.Client
}

// pushRequest is the body of POST /v1/push.
type pushRequest struct {
	Channels []string `json:"channels,omitempty"`
	Exclude  []string `json:"exclude,omitempty"`
	Text     string   `json:"text"`
}

// channel sends body to every socket subscribed to ch, using the raw
// shortcut: the body is the message and its type the Content-Type.
func (p *pusher) channel(ctx context.Context, ch, ctype string, body []byte) error {
	return p.post(ctx, "/v1/push/channel/"+url.PathEscape(ch), ctype, body)
}

// send uses the JSON form, needed for exclude.
func (p *pusher) send(ctx context.Context, req pushRequest) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	return p.post(ctx, "/v1/push", "application/json", b)
}

func (p *pusher) post(ctx context.Context, path, ctype string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("push %s: %w", path, err)
	}
	req.Header.Set("Content-Type", ctype)
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("push %s: %w", path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("push %s: sidecar answered %d: %s", path, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}
