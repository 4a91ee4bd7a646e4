// A real, certified OpenID provider (npm oidc-provider 9.13.3) for channelgate's tests.
//
// Usage: node op.mjs CONFIG.json
//
// CONFIG.json: {port, issuer, clients: [...], accounts: [...], jwks: {keys: [private JWKs]}, ttl?: {...}}
// (tests/components/oidc_provider.py writes it). Unlike `devInteractions`, the login form below checks the
// password, so tests can prove that a wrong password never reaches the gateway.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = new Map(config.accounts.map((account) => [account.sub, account]));

const escapeHtml = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>`
    + `<body><h1>${escapeHtml(title)}</h1>${body}</body></html>`;
}

function loginPage(uid, error) {
  const message = error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : '';
  return page('Sign in', `${message}
<form id="login" method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>Username <input name="username" required autofocus></label>
  <label>Password <input name="password" type="password" required></label>
  <button type="submit">Sign in</button>
</form>`);
}

const provider = new Provider(config.issuer, {
  clients: config.clients.map((client) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...client,
    ...(client.backchannel_logout_uri ? { backchannel_logout_session_required: true } : {}),
  })),
  jwks: config.jwks,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  async findAccount(_ctx, sub) {
    const account = accounts.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: account.username,
          name: account.name,
          email: account.email,
          email_verified: true,
          groups: account.groups,
        };
      },
    };
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Scope-mapped claims go into the ID token too, so the gateway can build a session from it alone.
  conformIdTokenClaims: false,
  // OAuth 2.0 Security BCP: every client, confidential or not, must use PKCE (only S256 exists in v9).
  pkce: { required: () => true },
  responseTypes: ['code'],
  // These clients are first-party: consent is implied, so grant whatever openid scopes were asked for.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    const grant = (grantId && await ctx.oidc.provider.Grant.find(grantId))
      || new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
    grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
    await grant.save();
    return grant;
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // The provider's form carries the xsrf token; a script submits it with logout=yes.
      async logoutSource(ctx, form) {
        ctx.body = page('Sign out', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<p>You are signed out.</p>');
      },
    },
  },
  // v9 refuses outgoing requests to special-use addresses (127.0.0.0/8 included) and the back-channel
  // logout then fails silently. The test clients live on loopback, so drop that SSRF dispatcher here.
  fetch(url, options) {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 86400,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 86400,
    BackchannelAuthenticationRequest: 600,
    DeviceCode: 600,
    ...(config.ttl ?? {}),
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<pre id="error">${escapeHtml(JSON.stringify(out))}</pre>`);
  },
});

provider.on('backchannel.error', (_ctx, err, client) => {
  console.error(`backchannel logout to ${client.clientId} failed: ${err}`);
});

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, url) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name !== 'login') {
    // Consent is implied by loadExistingGrant; any other prompt is finished as is.
    await provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
    return;
  }
  if (req.method === 'GET' && url.pathname === `/interaction/${details.uid}`) {
    sendHtml(res, 200, loginPage(details.uid));
    return;
  }
  if (req.method === 'POST' && url.pathname === `/interaction/${details.uid}/login`) {
    const form = await readForm(req);
    const account = config.accounts.find((a) => a.username === form.get('username'));
    if (!account || account.password !== form.get('password')) {
      sendHtml(res, 401, loginPage(details.uid, 'Invalid username or password.'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: account.sub } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  sendHtml(res, 404, page('Not found', ''));
}

const callback = provider.callback();
const server = createServer((req, res) => {
  const url = new URL(req.url, config.issuer);
  if (!url.pathname.startsWith('/interaction/')) {
    callback(req, res);
    return;
  }
  interaction(req, res, url).catch((err) => {
    console.error(err);
    if (!res.headersSent) sendHtml(res, 400, page('Interaction error', `<pre>${escapeHtml(err.message)}</pre>`));
  });
});

server.listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider ready at ${config.issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
