// A real OAuth 2.0 authorization server for tests/tests/real_components.rs:
// npm `oidc-provider` (panva), configured for the client credentials grant
// with resource indicators (RFC 8707), so that it issues RFC 9068 JWT access
// tokens (`typ: at+jwt`) whose audience is the requested resource.
//
//   node authorization-server.mjs --port 0 --audience https://fhir.example.test/r4 \
//        --other-audience https://other.example.test/r4 --patient pat-a --short-ttl 3
//
// Listens on 127.0.0.1:<port> (0: the kernel picks a free one) and prints
// `ready <port>` on stdout once it serves. The issuer is
// `http://127.0.0.1:<port>` (discovery at /.well-known/openid-configuration,
// keys at /jwks).
//
// Clients (client_secret_basic, secret = `<client id>-secret`):
//   system-es256   ES256 tokens, system/ scopes, 300 s
//   patient-rs256  RS256 tokens, patient/ scopes, `patient` claim (--patient)
//   short-lived    ES256 tokens, system/ scopes, --short-ttl seconds (default 3)
// A token request asks for a subset of the scopes with `scope` and for the
// audience with `resource` (--audience or --other-audience; anything else is
// `invalid_target`).
//
// Test control (not part of any OAuth profile, loopback only):
//   POST /__admin/rotate  replaces every signing key by a new one (new kids);
//                         the old keys leave the JWKS at once. Answers the
//                         new kids as JSON.
import crypto from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    audience: { type: 'string' },
    'other-audience': { type: 'string' },
    patient: { type: 'string', default: 'example' },
    'short-ttl': { type: 'string', default: '3' },
  },
});
if (!args.audience || !args['other-audience']) {
  console.error('usage: authorization-server.mjs --port N --audience URL --other-audience URL [--patient ID]');
  process.exit(2);
}

const SYSTEM_SCOPES = 'system/Patient.rs system/Patient.c system/Observation.rs system/Observation.c';
const PATIENT_SCOPES = 'patient/Patient.rs patient/Observation.rs';

const CLIENTS = {
  'system-es256': { alg: 'ES256', scope: SYSTEM_SCOPES, ttl: 300 },
  'patient-rs256': { alg: 'RS256', scope: PATIENT_SCOPES, ttl: 300, patient: args.patient },
  'short-lived': { alg: 'ES256', scope: SYSTEM_SCOPES, ttl: Number(args['short-ttl']) },
};

let generation = 0;

/** A fresh private JWKS: one P-256 and one RSA-2048 key, kids naming the generation. */
function newKeys() {
  generation += 1;
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  return {
    keys: [
      { ...ec, kid: `es256-gen${generation}`, use: 'sig', alg: 'ES256' },
      { ...rsa, kid: `rs256-gen${generation}`, use: 'sig', alg: 'RS256' },
    ],
  };
}

function newProvider(issuer, jwks) {
  const audiences = new Set([args.audience, args['other-audience']]);
  const provider = new Provider(issuer, {
    clients: Object.entries(CLIENTS).map(([id, c]) => ({
      client_id: id,
      client_secret: `${id}-secret`,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: c.scope,
    })),
    jwks,
    // Every scope a client may hold must be a scope the server supports.
    scopes: ['openid', ...new Set(Object.values(CLIENTS).flatMap((c) => c.scope.split(' ')))],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => args.audience,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource, client) => {
          if (!audiences.has(resource)) {
            throw new errors.InvalidTarget();
          }
          const c = CLIENTS[client.clientId];
          return {
            scope: c.scope,
            audience: resource,
            accessTokenTTL: c.ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: c.alg } },
          };
        },
      },
    },
    extraTokenClaims: (_ctx, token) => {
      const c = CLIENTS[token.clientId];
      return c?.patient ? { patient: c.patient } : undefined;
    },
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300,
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return provider;
}

let handler = null;

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/__admin/rotate') {
    const issuer = `http://127.0.0.1:${server.address().port}`;
    const jwks = newKeys();
    handler = newProvider(issuer, jwks).callback();
    console.log(`rotated ${jwks.keys.map((k) => k.kid).join(' ')}`);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kids: jwks.keys.map((k) => k.kid) }));
    return;
  }
  handler(req, res);
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  handler = newProvider(`http://127.0.0.1:${port}`, newKeys()).callback();
  console.log(`ready ${port}`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
