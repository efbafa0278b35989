// The TypeScript SDK's OAuth client side for client.mjs: an in-memory OAuthClientProvider (the SDK's
// interface, shaped like its examples/client/simpleOAuthClientProvider) and the connect loop of its
// examples/client/simpleOAuthClient: connect, and on UnauthorizedError finish the authorization
// with the code the "browser" brought back, then connect again on a new transport sharing the
// provider. The SDK itself does discovery (the broker's 401 and RFC 9728 metadata), dynamic client
// registration, PKCE, the RFC 8707 `resource`, refresh on 401 and step-up on 403 insufficient_scope.
//
// The browser is one fetch of the authorization URL: the test authorization server
// (tests/authserver) consents at once and answers 302 to the redirect URI with the code.
//
// Every time the SDK hands the provider something, one JSON line is printed (index null):
//   {"op": "authorize", "params": {<the authorization URL's query>}}
//   {"op": "save_client_information", "clientInformation": {...}}   (after registration)
//   {"op": "save_tokens", "tokens": {...}}
// so a test can check what was sent and feed saved credentials to a later run.

import { randomBytes } from "node:crypto";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

/** More authorization rounds than this in one connect means the server keeps refusing what it got. */
const MAX_AUTHORIZATIONS = 3;

/**
 * Scenario `oauth` options: {redirectUri, clientName, scope?, clientInformation?, tokens?, resource?}.
 * `clientInformation` and `tokens` are what an earlier run saved (a client that restarts);
 * `resource` replaces the RFC 8707 resource indicator the broker's metadata names, to see the
 * broker refuse a token meant for another audience.
 */
export class HeadlessOAuthProvider {
  constructor(options, emit) {
    this._emit = emit;
    this._redirectUri = options.redirectUri;
    this._metadata = {
      client_name: options.clientName ?? "broker-tests-node-client",
      redirect_uris: [options.redirectUri],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      // A public client, as MCP hosts usually are: PKCE is its only proof at the token endpoint.
      token_endpoint_auth_method: "none",
      ...(options.scope === undefined ? {} : { scope: options.scope }),
    };
    this._clientInformation = options.clientInformation;
    this._tokens = options.tokens;
    this._codeVerifier = undefined;
    this._state = undefined;
    this._code = undefined;
    if (options.resource !== undefined) {
      this.validateResourceURL = async () => new URL(options.resource);
    }
  }

  get redirectUrl() {
    return this._redirectUri;
  }

  get clientMetadata() {
    return this._metadata;
  }

  state() {
    this._state = randomBytes(16).toString("base64url");
    return this._state;
  }

  clientInformation() {
    return this._clientInformation;
  }

  saveClientInformation(clientInformation) {
    this._clientInformation = clientInformation;
    this._emit({ index: null, op: "save_client_information", ok: true, clientInformation });
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
    this._emit({ index: null, op: "save_tokens", ok: true, tokens });
  }

  saveCodeVerifier(codeVerifier) {
    this._codeVerifier = codeVerifier;
  }

  codeVerifier() {
    if (this._codeVerifier === undefined) throw new Error("no PKCE code verifier was saved");
    return this._codeVerifier;
  }

  async redirectToAuthorization(authorizationUrl) {
    this._emit({ index: null, op: "authorize", ok: true, params: Object.fromEntries(authorizationUrl.searchParams) });
    const answer = await fetch(authorizationUrl, { redirect: "manual" });
    const location = answer.headers.get("location");
    if (answer.status !== 302 || location === null) {
      throw new Error(`the authorization endpoint answered ${answer.status}: ${await answer.text()}`);
    }
    const back = new URL(location);
    if (`${back.origin}${back.pathname}` !== this._redirectUri) {
      throw new Error(`the authorization server redirected to ${location}, not to the redirect URI`);
    }
    const { code, state, error } = Object.fromEntries(back.searchParams);
    if (error !== undefined) throw new Error(`authorization refused: ${error}`);
    if (state !== this._state) throw new Error("the redirect's state is not the one sent");
    this._code = code;
  }

  /** The code the last redirect brought back, once. */
  takeCode() {
    const code = this._code;
    this._code = undefined;
    return code;
  }
}

/**
 * Connects `makeClient()` over `makeTransport(provider)`, signing in as often as the SDK asks to;
 * returns {client, transport}. Without a provider this is one plain connect.
 */
export async function connectSigningIn(makeClient, makeTransport, provider) {
  for (let round = 0; ; round += 1) {
    const client = makeClient();
    const transport = makeTransport(provider);
    try {
      await client.connect(transport);
      return { client, transport };
    } catch (error) {
      const code = provider?.takeCode();
      if (!(error instanceof UnauthorizedError) || code === undefined || round >= MAX_AUTHORIZATIONS) {
        throw error;
      }
      await transport.finishAuth(code);
    }
  }
}
