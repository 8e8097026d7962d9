// ollama-js against Minato's native door: prints one JSON document of what each call returned.
//
// Usage: node clients.mjs [URL] [KEY], or MINATO_URL and MINATO_KEY in the environment.
// tests/e2e/test_native_door.py runs it and checks the document; a failed call is reported in it
// (name, status, message) rather than ending the script, so one test sees every call's outcome.
import { Ollama } from "ollama";

const url = process.argv[2] ?? process.env.MINATO_URL;
const key = process.argv[3] ?? process.env.MINATO_KEY;
const model = process.env.MINATO_MODEL ?? "llama3.2:1b";
if (!url || !key) {
  console.error("usage: node clients.mjs URL KEY (or MINATO_URL and MINATO_KEY)");
  process.exit(2);
}

const keyed = new Ollama({ host: url, headers: { Authorization: `Bearer ${key}` } });
const keyless = new Ollama({ host: url });
const messages = [{ role: "user", content: "Why is the sky blue?" }];

async function outcome(call) {
  try {
    return { ok: true, value: await call() };
  } catch (error) {
    return { ok: false, name: error.name, status: error.status_code ?? null, message: error.message };
  }
}

const results = {
  version: await outcome(() => keyed.version()),
  chat: await outcome(async () => {
    const answer = await keyed.chat({ model, messages });
    return { content: answer.message.content, done: answer.done, eval_count: answer.eval_count };
  }),
  stream: await outcome(async () => {
    const parts = [];
    let last = null;
    for await (const part of await keyed.chat({ model, messages, stream: true })) {
      parts.push(part.message.content);
      last = part;
    }
    return { parts, done: last?.done ?? false, done_reason: last?.done_reason ?? null };
  }),
  list: await outcome(async () => (await keyed.list()).models.map((entry) => entry.model)),
  ps: await outcome(async () => (await keyed.ps()).models.map((entry) => entry.model)),
  unknown_model: await outcome(() => keyed.chat({ model: "no-such-model:1b", messages })),
  no_key: await outcome(() => keyless.list()),
};
console.log(JSON.stringify(results));
