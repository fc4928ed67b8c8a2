// Package rag connects to the RAG platform's gateway (rag.gateway.v1.GatewayService)
// through the stubs generated from the repository's protos/ (scripts/generate_go.py).
//
// Dial makes the one connection a program needs: TLS when a CA file is given
// (with a client certificate for mTLS), plaintext otherwise; the API key sent as
// "authorization: Bearer <key>" on every call, but never in plaintext to another
// machine; and a deadline for every call whose context has none. The Python
// client (rag_client, which the CLI uses) follows the same rules.
package rag

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	gatewayv1 "ragplatform/clients/go/gen/rag/gateway/v1"
)

// DefaultTimeout is the deadline of a call made without one when Options.Timeout is zero.
const DefaultTimeout = 60 * time.Second

// serviceConfig retries UNAVAILABLE (a replica down, a connection gone) with
// backoff, as services/common/channel_config.py does for the Python callers:
// every gateway RPC is safe to repeat. grpc-go before 1.40 applies the retry
// policy only with GRPC_GO_RETRY=on in the environment.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{}],
    "retryPolicy": {
      "maxAttempts": 3,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// ErrPlaintextKey is returned by Dial for an API key that would travel unencrypted to another machine.
var ErrPlaintextKey = errors.New("refusing to send the API key in plaintext off this machine")

// Options say how to reach the gateway. The zero value is plaintext without a key.
type Options struct {
	// CAFile (PEM) turns TLS on: the gateway's certificate must chain to it.
	CAFile string
	// CertFile and KeyFile (PEM, both or neither) are the client certificate for mTLS.
	CertFile, KeyFile string
	// ServerName is checked against the gateway's certificate instead of the target's host.
	ServerName string
	// APIKey goes with every call; empty sends none.
	APIKey string
	// Timeout is the deadline of calls whose context has none; zero means DefaultTimeout.
	Timeout time.Duration
}

// Client is a connection to the gateway; Gateway is its generated stub.
type Client struct {
	Gateway gatewayv1.GatewayServiceClient
	conn    *grpc.ClientConn
}

// Dial connects lazily: an unreachable gateway shows as UNAVAILABLE on the first call.
// It fails at once on unreadable TLS files and returns ErrPlaintextKey for a key
// that would go without TLS to a target off this machine (IsLoopbackTarget).
func Dial(target string, options Options) (*Client, error) {
	secure := options.CAFile != ""
	if options.APIKey != "" && !secure && !IsLoopbackTarget(target) {
		return nil, fmt.Errorf("%w: %s is not loopback; give the CA file of the gateway's certificate to use TLS",
			ErrPlaintextKey, target)
	}
	timeout := options.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	dialOptions := []grpc.DialOption{
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithChainUnaryInterceptor(deadline(timeout).unary),
		grpc.WithChainStreamInterceptor(deadline(timeout).stream),
	}
	if secure {
		config, err := tlsConfig(options)
		if err != nil {
			return nil, err
		}
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		dialOptions = append(dialOptions, grpc.WithInsecure())
	}
	if options.APIKey != "" {
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(bearer{options.APIKey, secure}))
	}
	conn, err := grpc.Dial(target, dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("gateway %s: %w", target, err)
	}
	return &Client{Gateway: gatewayv1.NewGatewayServiceClient(conn), conn: conn}, nil
}

// Close ends the connection; calls in flight fail with CANCELED.
func (c *Client) Close() error {
	return c.conn.Close()
}

func tlsConfig(options Options) (*tls.Config, error) {
	if (options.CertFile == "") != (options.KeyFile == "") {
		return nil, errors.New("a client certificate needs its key: give both or neither")
	}
	ca, err := os.ReadFile(options.CAFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", options.CAFile)
	}
	config := &tls.Config{RootCAs: roots, ServerName: options.ServerName, MinVersion: tls.VersionTLS12}
	if options.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(options.CertFile, options.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

// bearer sends the key the way the gateway reads it (gateway/auth.py).
type bearer struct {
	key        string
	requireTLS bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

// RequireTransportSecurity: grpc-go then refuses to send the key over a
// connection that is not TLS. Plaintext is allowed only where Dial checked that
// the target is loopback.
func (b bearer) RequireTransportSecurity() bool {
	return b.requireTLS
}

// deadline gives calls without a deadline one, so that no call can wait forever.
type deadline time.Duration

func (d deadline) unary(ctx context.Context, method string, request, reply interface{},
	conn *grpc.ClientConn, invoke grpc.UnaryInvoker, options ...grpc.CallOption,
) error {
	if _, set := ctx.Deadline(); !set {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(d))
		defer cancel()
	}
	return invoke(ctx, method, request, reply, conn, options...)
}

func (d deadline) stream(ctx context.Context, description *grpc.StreamDesc, conn *grpc.ClientConn,
	method string, open grpc.Streamer, options ...grpc.CallOption,
) (grpc.ClientStream, error) {
	if _, set := ctx.Deadline(); set {
		return open(ctx, description, conn, method, options...)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(d))
	stream, err := open(ctx, description, conn, method, options...)
	if err != nil {
		cancel()
		return nil, err
	}
	return &cancelAtEnd{ClientStream: stream, cancel: cancel}, nil
}

// cancelAtEnd releases the stream's deadline timer once the stream has ended (RecvMsg fails, io.EOF included).
type cancelAtEnd struct {
	grpc.ClientStream
	cancel context.CancelFunc
}

func (s *cancelAtEnd) RecvMsg(message interface{}) error {
	err := s.ClientStream.RecvMsg(message)
	if err != nil {
		s.cancel()
	}
	return err
}
