#!/usr/bin/env node
// A scripted MCP client on the official TypeScript SDK, so the broker is tested against a second,
// independent client implementation. Usage:
//
//   node client.mjs '<scenario JSON>'        or        node client.mjs < scenario.json
//
// Scenario: {"url": "http://127.0.0.1:PORT/mcp", "apiKey": "...", "steps": [{"op": ..., ...}, ...]}
// plus optional "headers" (sent on every request), "strictCapabilities" (the SDK then refuses
// requests, task-augmented ones included, that the server's initialize result did not advertise)
// and "oauth" instead of "apiKey": the SDK signs in by itself (see oauth.mjs for the options and
// the lines it adds, with index null, to the output).
// Each step prints one JSON line on stdout: {"index", "op", "ok": true, ...} or
// {"index", "op", "ok": false, "error": {"code", "message", "data"?, "httpStatus"?}}.
// A failed connect prints one line with op "connect" and ends the scenario. Protocol errors are
// results, not crashes: the exit status is non-zero only when the scenario itself is unusable or
// this script breaks (exit 2, reason on stderr).
//
// Steps:
//   server_info        negotiated protocol version, server capabilities and implementation info
//   list_tools
//   call_tool          {name, arguments?, timeoutMs?, maxTotalTimeoutMs?, resetTimeoutOnProgress?, progress?}
//   call_tool_as_task  {name, arguments?, task?, progress?}  tools/call with a `task` field (default {},
//                      e.g. {"ttl": 60000}); prints the CreateTaskResult and remembers the task id
//   call_tool_stream   {name, arguments?, task?, progress?}  the SDK's whole flow: without `task` the
//                      SDK itself decides whether to make a task (the server advertises
//                      tasks.requests.tools.call and an earlier list_tools showed the tool's
//                      execution.taskSupport as optional/required); then it polls tasks/get at the
//                      task's pollInterval and fetches tasks/result. Prints every message.
//   get_task           {taskId?}           tasks/get (taskId defaults to the last created task)
//   task_result        {taskId?, timeoutMs?}  tasks/result, plus progress seen for that task so far
//   cancel_task        {taskId?}           tasks/cancel
//   list_tasks         {cursor?}           tasks/list
//   notifications      prints and forgets the server notifications received so far (except progress)
//   http_failures      prints and forgets the non-2xx HTTP answers so far: {url, status, wwwAuthenticate}

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport, StreamableHTTPError } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CallToolResultSchema,
  CreateTaskResultSchema,
  McpError,
  ResultSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { connectSigningIn, HeadlessOAuthProvider } from "./oauth.mjs";

class ScenarioError extends Error {}

async function readScenario() {
  const text = process.argv[2] ?? (await readStdin());
  let scenario;
  try {
    scenario = JSON.parse(text);
  } catch (error) {
    throw new ScenarioError(`scenario is not JSON: ${error.message}`);
  }
  if (typeof scenario !== "object" || scenario === null || Array.isArray(scenario)) {
    throw new ScenarioError("scenario must be a JSON object");
  }
  if (typeof scenario.url !== "string") {
    throw new ScenarioError("scenario.url must be the broker's MCP endpoint URL");
  }
  if (scenario.oauth !== undefined && typeof scenario.oauth?.redirectUri !== "string") {
    throw new ScenarioError("scenario.oauth must be an object with a redirectUri");
  }
  if (!Array.isArray(scenario.steps)) {
    throw new ScenarioError("scenario.steps must be a list of steps");
  }
  for (const [index, step] of scenario.steps.entries()) {
    if (typeof step !== "object" || step === null || !(step.op in STEPS)) {
      throw new ScenarioError(
        `steps[${index}]: expected an object whose "op" is one of ${Object.keys(STEPS).join(", ")}`,
      );
    }
  }
  return scenario;
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

/** Remembers the body of the last non-2xx HTTP response, because the SDK's error keeps only its text,
 * and the challenges it carried, because the SDK acts on them without telling. */
function recordingFetch(state) {
  return async (input, init) => {
    const response = await fetch(input, init);
    if (!response.ok) {
      const body = await response.clone().text();
      state.lastHttpFailure = { status: response.status, body };
      const wwwAuthenticate = response.headers.get("www-authenticate");
      state.httpFailures.push({ url: String(input), status: response.status, wwwAuthenticate });
    }
    return response;
  };
}

function describeError(error, state) {
  if (error instanceof McpError) {
    // The SDK prefixes the peer's message with "MCP error <code>: "; report the message as sent.
    const prefix = `MCP error ${error.code}: `;
    const message = error.message.startsWith(prefix) ? error.message.slice(prefix.length) : error.message;
    return { code: error.code, message, ...(error.data === undefined ? {} : { data: error.data }) };
  }
  if (error instanceof StreamableHTTPError) {
    const failure = state.lastHttpFailure;
    const described = { httpStatus: error.code, code: null, message: error.message };
    if (failure && failure.status === error.code) {
      try {
        const body = JSON.parse(failure.body);
        if (body && typeof body.error === "object") {
          described.code = body.error.code;
          described.message = body.error.message;
        }
      } catch {
        described.body = failure.body;
      }
    }
    return described;
  }
  // Zod validation failures and the like: the peer answered something the SDK refuses.
  return { code: null, message: `${error.name}: ${error.message}` };
}

function taskIdFor(step, state) {
  const taskId = step.taskId ?? state.lastTaskId;
  if (taskId === undefined) {
    // A step error, not a scenario error: usually the server did not create the task asked for earlier.
    throw new Error(`${step.op} needs a taskId and no task was created earlier in this scenario`);
  }
  return taskId;
}

function requestOptions(step, progress) {
  const options = {};
  if (step.timeoutMs !== undefined) options.timeout = step.timeoutMs;
  if (step.maxTotalTimeoutMs !== undefined) options.maxTotalTimeout = step.maxTotalTimeoutMs;
  if (step.resetTimeoutOnProgress !== undefined) options.resetTimeoutOnProgress = step.resetTimeoutOnProgress;
  if (step.progress) options.onprogress = (update) => progress.push(update);
  return options;
}

const STEPS = {
  async server_info(client, _step, state) {
    return {
      result: {
        protocolVersion: state.transport.protocolVersion ?? null,
        capabilities: client.getServerCapabilities() ?? null,
        serverInfo: client.getServerVersion() ?? null,
        instructions: client.getInstructions() ?? null,
      },
    };
  },

  async list_tools(client) {
    return { result: await client.listTools() };
  },

  async call_tool(client, step) {
    const progress = [];
    const params = { name: step.name, arguments: step.arguments ?? {} };
    const result = await client.callTool(params, CallToolResultSchema, requestOptions(step, progress));
    return { result, progress };
  },

  async call_tool_as_task(client, step, state) {
    const progress = [];
    // Parsed loosely first: a server that ignores `task` answers with a plain CallToolResult, and that
    // should read as such rather than as a schema error.
    const answer = await client.request(
      { method: "tools/call", params: { name: step.name, arguments: step.arguments ?? {} } },
      ResultSchema,
      { ...requestOptions(step, progress), task: step.task ?? {} },
    );
    if (!("task" in answer)) {
      const message = "the server answered the task-augmented call with a plain result, not a CreateTaskResult";
      return { ok: false, error: { code: null, message }, result: answer, progress };
    }
    const created = CreateTaskResultSchema.parse(answer);
    state.lastTaskId = created.task.taskId;
    // The SDK keeps the call's progress handler alive for the task's lifetime; later steps report it.
    state.taskProgress.set(created.task.taskId, progress);
    return { result: created, progress: [...progress] };
  },

  async call_tool_stream(client, step, state) {
    const progress = [];
    const messages = [];
    const params = { name: step.name, arguments: step.arguments ?? {} };
    const options = requestOptions(step, progress);
    if (step.task !== undefined) options.task = step.task;
    const stream = client.experimental.tasks.callToolStream(params, CallToolResultSchema, options);
    for await (const message of stream) {
      if (message.type === "error") {
        messages.push({ type: "error", error: describeError(message.error, state) });
      } else {
        messages.push(message);
      }
      if (message.type === "taskCreated") state.lastTaskId = message.task.taskId;
    }
    const last = messages.at(-1);
    return { ok: last?.type === "result", messages, progress };
  },

  async get_task(client, step, state) {
    return { result: await client.experimental.tasks.getTask(taskIdFor(step, state)) };
  },

  async task_result(client, step, state) {
    const taskId = taskIdFor(step, state);
    const options = step.timeoutMs === undefined ? {} : { timeout: step.timeoutMs };
    const result = await client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema, options);
    return { result, progress: [...(state.taskProgress.get(taskId) ?? [])] };
  },

  async cancel_task(client, step, state) {
    return { result: await client.experimental.tasks.cancelTask(taskIdFor(step, state)) };
  },

  async list_tasks(client, step) {
    return { result: await client.experimental.tasks.listTasks(step.cursor) };
  },

  async notifications(_client, _step, state) {
    const received = state.notifications.splice(0);
    return { result: received };
  },

  async http_failures(_client, _step, state) {
    return { result: state.httpFailures.splice(0) };
  },
};

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function run(scenario) {
  const state = {
    lastTaskId: undefined,
    taskProgress: new Map(),
    notifications: [],
    lastHttpFailure: null,
    httpFailures: [],
  };
  const headers = { ...(scenario.headers ?? {}) };
  if (scenario.apiKey !== undefined) headers.Authorization = `Bearer ${scenario.apiKey}`;
  const provider = scenario.oauth === undefined ? undefined : new HeadlessOAuthProvider(scenario.oauth, emit);
  const makeTransport = (authProvider) =>
    new StreamableHTTPClientTransport(new URL(scenario.url), {
      requestInit: { headers },
      fetch: recordingFetch(state),
      authProvider,
    });
  const makeClient = () => {
    const client = new Client(
      { name: "broker-tests-node-client", version: "1.0.0" },
      { capabilities: {}, enforceStrictCapabilities: scenario.strictCapabilities === true },
    );
    client.fallbackNotificationHandler = async (notification) => {
      state.notifications.push(notification);
    };
    return client;
  };
  let client, transport;
  try {
    ({ client, transport } = await connectSigningIn(makeClient, makeTransport, provider));
  } catch (error) {
    emit({ index: null, op: "connect", ok: false, error: describeError(error, state) });
    return;
  }
  state.transport = transport;
  try {
    for (const [index, step] of scenario.steps.entries()) {
      try {
        const { ok = true, ...outcome } = await STEPS[step.op](client, step, state);
        emit({ index, op: step.op, ok, ...outcome });
      } catch (error) {
        emit({ index, op: step.op, ok: false, error: describeError(error, state) });
      }
    }
  } finally {
    try {
      await transport.terminateSession();
    } catch (error) {
      process.stderr.write(`could not end the session: ${error.message}\n`);
    }
    await client.close();
  }
}

let exitCode = 0;
try {
  await run(await readScenario());
} catch (error) {
  process.stderr.write(
    error instanceof ScenarioError ? `bad scenario: ${error.message}\n` : `client failed: ${error.stack}\n`,
  );
  exitCode = 2;
}
// The scenario is over, but the SDK may still hold a timer: it schedules an SSE resumption when a POST
// stream that carried an event id ends with a JSON-RPC error rather than a result, even after close().
process.stdout.write("", () => process.exit(exitCode));
