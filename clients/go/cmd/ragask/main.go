// Command ragask asks the RAG platform's gateway a question and prints the answer
// and its numbered sources (document id, chunk, score, and "cited" when the answer
// cites it); with -stream the answer is printed as it is generated.
//
//	ragask [-gateway HOST:PORT] [-namespace NAME] [-api-key KEY] [-timeout 60s] [-stream] QUESTION...
//
// The defaults come from the environment variables the Python CLI reads:
// RAG_GATEWAY, RAG_NAMESPACE, RAG_API_KEY, and for TLS RAG_TLS_CA_FILE,
// RAG_TLS_CERT_FILE, RAG_TLS_KEY_FILE and RAG_TLS_SERVER_NAME. A failed call
// prints its gRPC status code and message and exits 1; bad usage exits 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	gatewayv1 "ragplatform/clients/go/gen/rag/gateway/v1"
	"ragplatform/clients/go/rag"
)

const (
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type arguments struct {
	gateway, namespace, question string
	stream                       bool
	timeout                      time.Duration
	options                      rag.Options
}

func run(args []string, stdout, stderr io.Writer) int {
	parsed, err := parse(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "ragask: %s\n", printable(err.Error()))
		return exitUsage
	}
	client, err := rag.Dial(parsed.gateway, parsed.options)
	if err != nil {
		fmt.Fprintf(stderr, "ragask: %s\n", printable(err.Error()))
		return exitUsage
	}
	defer client.Close()

	// One deadline for the whole call, a stream's every event included.
	ctx, cancel := context.WithTimeout(context.Background(), parsed.timeout)
	defer cancel()
	request := &gatewayv1.AskRequest{Namespace: parsed.namespace, Question: parsed.question}
	if parsed.stream {
		err = askStream(ctx, client.Gateway, request, stdout)
	} else {
		err = ask(ctx, client.Gateway, request, stdout)
	}
	if err != nil {
		// Errors that are not gRPC statuses (a stream cut short) come out as UNKNOWN.
		failure := status.Convert(err)
		fmt.Fprintf(stderr, "ragask: [%s] %s\n", codeName(failure.Code()), printable(failure.Message()))
		return exitFailed
	}
	return 0
}

func parse(args []string, stderr io.Writer) (arguments, error) {
	flags := flag.NewFlagSet("ragask", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: ragask [flags] QUESTION...")
		flags.PrintDefaults()
	}
	var parsed arguments
	flags.StringVar(&parsed.gateway, "gateway", fromEnv("RAG_GATEWAY", "127.0.0.1:50050"),
		"gateway target (RAG_GATEWAY)")
	flags.StringVar(&parsed.namespace, "namespace", fromEnv("RAG_NAMESPACE", "default"),
		"namespace (RAG_NAMESPACE)")
	// No default shown for the key: the usage text would print it.
	flags.StringVar(&parsed.options.APIKey, "api-key", "",
		"API key (default: RAG_API_KEY, which keeps it out of the process list)")
	flags.DurationVar(&parsed.timeout, "timeout", rag.DefaultTimeout, "deadline of the whole call")
	flags.BoolVar(&parsed.stream, "stream", false, "print the answer as it is generated (AskStream)")
	flags.StringVar(&parsed.options.CAFile, "ca-file", os.Getenv("RAG_TLS_CA_FILE"),
		"CA of the gateway's certificate: turns TLS on (RAG_TLS_CA_FILE)")
	flags.StringVar(&parsed.options.CertFile, "cert-file", os.Getenv("RAG_TLS_CERT_FILE"),
		"client certificate for mTLS (RAG_TLS_CERT_FILE)")
	flags.StringVar(&parsed.options.KeyFile, "key-file", os.Getenv("RAG_TLS_KEY_FILE"),
		"client certificate's key (RAG_TLS_KEY_FILE)")
	flags.StringVar(&parsed.options.ServerName, "server-name", os.Getenv("RAG_TLS_SERVER_NAME"),
		"name to check the gateway's certificate against instead of the target's host (RAG_TLS_SERVER_NAME)")
	if err := flags.Parse(args); err != nil {
		return parsed, err
	}
	if parsed.options.APIKey == "" {
		parsed.options.APIKey = os.Getenv("RAG_API_KEY")
	}
	parsed.question = strings.TrimSpace(strings.Join(flags.Args(), " "))
	if parsed.question == "" {
		flags.Usage()
		return parsed, errors.New("no question given")
	}
	if parsed.timeout <= 0 {
		return parsed, fmt.Errorf("-timeout must be positive, got %s", parsed.timeout)
	}
	parsed.options.Timeout = parsed.timeout
	return parsed, nil
}

// fromEnv is the variable's value, or fallback when it is unset or empty.
func fromEnv(variable, fallback string) string {
	if value := os.Getenv(variable); value != "" {
		return value
	}
	return fallback
}

func ask(ctx context.Context, gateway gatewayv1.GatewayServiceClient, request *gatewayv1.AskRequest,
	stdout io.Writer,
) error {
	answer, err := gateway.Ask(ctx, request)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, printable(answer.GetAnswer()))
	printTrailer(stdout, answer)
	return nil
}

// askStream prints the answer's deltas as they arrive, then the final answer's outcome and sources.
func askStream(ctx context.Context, gateway gatewayv1.GatewayServiceClient, request *gatewayv1.AskRequest,
	stdout io.Writer,
) error {
	stream, err := gateway.AskStream(ctx, &gatewayv1.AskStreamRequest{Request: request})
	if err != nil {
		return err
	}
	for {
		response, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("the stream ended without a final answer")
		}
		if err != nil {
			return err
		}
		switch event := response.GetEvent().(type) {
		case *gatewayv1.AskStreamResponse_Delta:
			fmt.Fprint(stdout, printable(event.Delta.GetText()))
		case *gatewayv1.AskStreamResponse_Final:
			fmt.Fprintln(stdout)
			printTrailer(stdout, event.Final)
			return nil
		}
		// The sources event comes first; the final answer repeats them with their citations.
	}
}

// printTrailer prints the outcome and the numbered sources, cited ones marked "cited".
func printTrailer(stdout io.Writer, answer *gatewayv1.AskResponse) {
	fmt.Fprintf(stdout, "(%s)\n", answer.GetOutcome())
	for _, source := range answer.GetSources() {
		hit := source.GetHit()
		mark := ""
		if source.GetCited() {
			mark = "  cited"
		}
		fmt.Fprintf(stdout, "  [%d] %s #%d  score %.3f%s\n",
			source.GetNumber(), printable(hit.GetDocumentId()), hit.GetChunkIndex(), hit.GetScore(), mark)
	}
}
