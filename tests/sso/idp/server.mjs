// The OpenID provider the SSO tests run: npm oidc-provider with its development login page (any login name
// signs in; the login name is the account). Configured by the JSON in IDP_CONFIG:
//   {"port", "issuer", "clients": [...], "jwks": {"keys": [private JWK]}, "accounts": {"<login>": {claims}}}
// An account not listed gets {email: <login>, email_verified: true}. Prints "ready <issuer>" once listening.
import Provider from 'oidc-provider';

const config = JSON.parse(process.env.IDP_CONFIG);
const accounts = config.accounts || {};

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ['hearth-test-idp-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: id, email_verified: true, ...(accounts[id] || {}) };
      },
    };
  },
  // First-party clients: no consent page; every scope the client asks for is granted.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`ready ${config.issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
