// A real OpenID Connect provider for the end-to-end sign-in test (tests/e2e/test_oidc.py):
// panva's oidc-provider, the version package-lock.json pins (8.x: it runs on Node.js 18, Debian
// bookworm's, as well as on 20 and 22; 9.x wants 20.19 or later), configured by the test fixture.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json: {"port": 0-65535, "client_id": "...", "client_secret": "...",
//               "redirect_uri": "http://127.0.0.1:PORT/oauth2callback",
//               "role_claim": "role", "role_scope": "console",
//               "accounts": {"otto": {"email": "otto@example.org", "role": "operator"}, ...}}
//
// The issuer is http://127.0.0.1:PORT: the package accepts plain http redirect_uris for a web
// client using the code flow (it insists on https only for the implicit flow). Sign-in uses the
// package's own development interactions: a login form (any password) and a consent form; the
// login name is the account id, and findAccount knows no name outside `accounts`. An account's claims are exactly its entry
// in `accounts` plus `sub`; the claim `role_claim` is released for the scope `role_scope`, and
// conformIdTokenClaims is off so that the ID Token carries the granted scopes' claims (Streamlit
// reads the identity from the ID Token only, never from the userinfo endpoint). Its prompts are
// login and consent: Streamlit's default prompt=select_account is refused as unsupported, so the
// test's [auth] asks for prompt=login (client_kwargs), as a deployment on such a provider would.
// The process prints one line "listening ISSUER" once it accepts connections, and stops on SIGTERM.

import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const roleClaim = config.role_claim ?? 'role';
const roleScope = config.role_scope ?? 'console';
const accounts = config.accounts ?? {};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: config.client_id,
      client_secret: config.client_secret,
      redirect_uris: [config.redirect_uri],
      // Streamlit's st.logout sends the browser back to its redirect_uri after the provider's sign-out.
      post_logout_redirect_uris: [config.redirect_uri],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    [roleScope]: [roleClaim],
  },
  conformIdTokenClaims: false,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    if (!Object.hasOwn(accounts, id)) {
      return undefined;
    }
    return {
      accountId: id,
      async claims() {
        return { ...accounts[id], sub: id };
      },
    };
  },
});

provider.on('server_error', (ctx, error) => {
  console.error('server_error', error);
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
