// The TypeScript SDK against `broker serve --demo`: a held call, waited for with progress.
//
//   npm install --prefix examples/agents      (the SDK, pinned in examples/agents/package.json)
//   node examples/agents/typescript_demo.mjs  # waits; approve at http://127.0.0.1:8765/ (demo / demo)
//
// With onprogress and resetTimeoutOnProgress the broker holds the call until a human decides or the
// rule's deadline passes, sending progress every few seconds; each one restarts the SDK's 60 s
// timeout. Without them the call is answered "PENDING HUMAN APPROVAL" after the hold budget, and the
// identical call (or check_approval) later returns the outcome.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = new URL(process.env.BROKER_URL ?? "http://127.0.0.1:8765/mcp");
const key = process.env.BROKER_API_KEY; // the demo takes anonymous agents
const transport = new StreamableHTTPClientTransport(url, {
  requestInit: { headers: key ? { Authorization: `Bearer ${key}` } : {} },
});
const client = new Client({ name: "typescript-demo", version: "1.0.0" });
await client.connect(transport);
try {
  const result = await client.callTool(
    { name: "place_order", arguments: { symbol: "BTCUSD", side: "buy", quantity: 10, price: 90000 } },
    undefined,
    { onprogress: (update) => console.error(update.message), resetTimeoutOnProgress: true },
  );
  for (const block of result.content) if (block.type === "text") console.log(block.text);
} finally {
  await transport.terminateSession(); // close() alone does not end the session on the broker
  await client.close();
}
