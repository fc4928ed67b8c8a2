#!/usr/bin/env node
// Ingests documents through the gateway, then asks a question twice: with Ask
// (one reply) and with AskStream (sources, answer deltas, final answer).
// The stubs are built at run time from the repository's protos/ tree, the same
// contract the Python services are generated from; no copy of it lives here.
//
//   node ask.js [--gateway 127.0.0.1:50050] [--namespace default] --question "..." [FILE...]

import { readFileSync } from "node:fs";
import { basename, dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PROTOS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");
const DEADLINE_MS = 60_000;
const USAGE = "usage: node ask.js [--gateway HOST:PORT] [--namespace NAME] --question TEXT [FILE...]";

function gatewayClient(target) {
  const definition = protoLoader.loadSync("rag/gateway/v1/gateway.proto", {
    includeDirs: [PROTOS],
    enums: String, // enum values by name, e.g. ANSWER_OUTCOME_ANSWERED
    longs: String,
    defaults: true,
    oneofs: true, // a oneof's set field is named by a virtual property, e.g. event.event
  });
  const { GatewayService } = grpc.loadPackageDefinition(definition).rag.gateway.v1;
  return new GatewayService(target, grpc.credentials.createInsecure());
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + DEADLINE_MS }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function document(path) {
  const id = basename(path);
  return { id, title: basename(path, extname(path)).replaceAll("-", " "), text: readFileSync(path, "utf8") };
}

function printSources(sources) {
  for (const { number, hit, cited } of sources) {
    const mark = cited ? "  cited" : "";
    console.log(`  [${number}] ${hit.documentId} #${hit.chunkIndex}  score ${hit.score.toFixed(3)}${mark}`);
  }
}

async function main() {
  const { values, positionals } = parseArgs({
    options: {
      gateway: { type: "string", default: process.env.RAG_GATEWAY ?? "127.0.0.1:50050" },
      namespace: { type: "string", short: "n", default: "default" },
      question: { type: "string", short: "q" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (!values.question) {
    console.error(USAGE);
    process.exit(2);
  }
  const client = gatewayClient(values.gateway);
  const { namespace, question } = values;

  if (positionals.length > 0) {
    const ingested = await unary(client, "IngestDocuments", { namespace, documents: positionals.map(document) });
    for (const result of ingested.results) {
      console.log(`ingested ${result.documentId}: ${result.status} (${result.chunkCount} chunks)`);
    }
  }

  const answer = await unary(client, "Ask", { namespace, question });
  console.log(`\nAsk (${answer.outcome}):\n${answer.answer}`);
  printSources(answer.sources);

  process.stdout.write("\nAskStream:\n");
  const stream = client.AskStream({ request: { namespace, question } }, { deadline: Date.now() + DEADLINE_MS });
  for await (const response of stream) {
    if (response.event === "delta") {
      process.stdout.write(response.delta.text);
    } else if (response.event === "final") {
      process.stdout.write(`\n(${response.final.outcome})\n`);
      printSources(response.final.sources);
    }
  }
  client.close();
}

main().catch((error) => {
  const code = typeof error.code === "number" ? ` [${grpc.status[error.code]}]` : "";
  console.error(`ask.js:${code} ${error.details ?? error.message}`);
  process.exit(1);
});
