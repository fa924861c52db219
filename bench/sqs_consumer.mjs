// The Node comparison: bbc/sqs-consumer, run as a subprocess by bench/consumers.py, in two shapes.
// Batch (the default): BENCH_POLLERS Consumer instances in this one process sharing one SQSClient (one long
// poll each, like the worker's pollers), batchSize 10 and handleMessageBatch, so each receive is acknowledged
// with one DeleteMessageBatch; the handler runs on every message of the batch at once; the bench's wait and
// visibility, and the same attributes requested as the worker and the raw loop (every message attribute and
// every message system attribute). BENCH_SQS_CONSUMER_DEFAULTS=1: ONE Consumer with the library's default
// settings (batchSize 1, handleMessage, its own 20 s wait, the queue's visibility, no attributes): what most
// users run. Configured by BENCH_* and AWS_* variables; prints "ready" once started and, on SIGTERM, one JSON
// line with the number of messages it handled.
import { appendFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { SQSClient } from "@aws-sdk/client-sqs";
import { Consumer } from "sqs-consumer";

const env = process.env;
const queueUrl = env.BENCH_QUEUE_URL;
const defaults = env.BENCH_SQS_CONSUMER_DEFAULTS === "1";
const pollers = Number(env.BENCH_POLLERS ?? "2");
const waitTimeSeconds = Number(env.BENCH_WAIT_SECONDS ?? "5");
const visibilityTimeout = Number(env.BENCH_VISIBILITY_SECONDS ?? "60");
const handlerName = env.BENCH_HANDLER ?? "noop";
const latencyFile = env.BENCH_LATENCY_FILE;

let handled = 0;

const handlers = {
  noop: async () => {},
  sleep50: async () => {
    await sleep(50);
  },
  latency: async (message) => {
    const started = (performance.timeOrigin + performance.now()) / 1000;
    const sent = Number(JSON.parse(message.Body).t);
    appendFileSync(latencyFile, `${(started - sent).toFixed(6)} ${message.MessageId}\n`);
  },
};
const handle = handlers[handlerName];
if (!handle) {
  console.error(`unknown handler ${handlerName}`);
  process.exit(2);
}

// The endpoint and region have to be given to any client outside AWS: every shape gets the same one.
const sqs = new SQSClient({
  endpoint: env.AWS_ENDPOINT_URL,
  region: env.AWS_DEFAULT_REGION ?? "us-east-1",
});

const options = defaults
  ? [
      {
        queueUrl,
        sqs,
        handleMessage: async (message) => {
          await handle(message);
          handled += 1;
          return message;
        },
      },
    ]
  : Array.from({ length: pollers }, () => ({
      queueUrl,
      sqs,
      batchSize: 10,
      waitTimeSeconds,
      visibilityTimeout,
      messageAttributeNames: ["All"],
      messageSystemAttributeNames: ["All"],
      handleMessageBatch: async (messages) => {
        await Promise.all(messages.map((message) => handle(message)));
        handled += messages.length;
        return messages;
      },
    }));

const consumers = options.map((option) => {
  const consumer = Consumer.create(option);
  consumer.on("error", (err) => console.error(`error: ${err.message}`));
  consumer.on("processing_error", (err) => console.error(`processing_error: ${err.message}`));
  return consumer;
});

process.on("SIGTERM", () => {
  for (const consumer of consumers) consumer.stop();
  console.log(JSON.stringify({ handled }));
  process.exit(0);
});

for (const consumer of consumers) consumer.start();
console.log("ready");
