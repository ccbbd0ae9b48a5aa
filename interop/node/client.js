// usermeta from Node.js with @grpc/grpc-js, loading proto/usermeta/v1/usermeta.proto at run time with
// @grpc/proto-loader (no code generation), as a test: health (grpc-health-check), all four RPCs and two errors
// with their rich details decoded (google.rpc.Status from google-proto-files), every answer checked.
// Exits 1 at the first mismatch.
//
// Reads from the environment (interop/run.sh and interop/node/run.sh set them from `usermeta dev`'s banner):
//   USERMETA_ADDR  host:port of usermeta (plaintext)
//   USER_TOKEN     an access token of a user whose keys under `profile.` are self-writable
//   ADMIN_TOKEN    an access token of a usermeta admin (USERMETA_ADMINS)
//   DEMO_USER_ID   the ZITADEL user id USER_TOKEN belongs to; it has ContractNumber=1234
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtoFiles = require('google-proto-files');
const health = require('grpc-health-check');

const SERVICE = 'usermeta.v1.UserMetadataService';
const KEY = 'profile.interop-node';
const TIMEOUT_MS = 10_000;

// The contract, as it is in the repository. proto-loader brings google/protobuf/timestamp.proto along;
// google/rpc/status.proto, which it imports, comes from google-proto-files.
const PROTO_ROOT = path.resolve(__dirname, '../../proto');
const GOOGLE_PROTOS = path.join(googleProtoFiles.getProtoPath(), '..');
const definition = protoLoader.loadSync('usermeta/v1/usermeta.proto', {
  includeDirs: [PROTO_ROOT, GOOGLE_PROTOS],
  keepCase: true, // field names as in the proto: user_id, next_page_token
  longs: String, // int64 total_size as a string, as in JSON
  enums: String, // enum values by name
  defaults: true, // unset scalars as their defaults ('' and 0), so a missing field compares like an empty one
  oneofs: true, // MetadataValue gets `kind: 'text' | 'binary'`
});
const { usermeta } = grpc.loadPackageDefinition(definition);
const HealthClient = grpc.makeClientConstructor(health.service, 'grpc.health.v1.Health');

// google.rpc.Status and its details, for the `grpc-status-details-bin` trailer of a failed call.
const rpcProtos = new protobuf.Root();
rpcProtos.resolvePath = (_origin, target) => path.join(googleProtoFiles.getProtoPath(), '..', target);
rpcProtos.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const Status = rpcProtos.lookupType('google.rpc.Status');

function check(ok, what, answer) {
  if (ok) {
    console.log(`   ok   ${what}`);
    return;
  }
  console.log(`   FAIL ${what}`);
  if (answer !== undefined) console.log(`   the answer was: ${JSON.stringify(answer)}`);
  process.exit(1);
}

/** gRPC metadata carrying the caller's ZITADEL access token. */
function bearer(token) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** Promise form of a unary call, with a deadline. */
function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + TIMEOUT_MS }, (error, answer) =>
      error ? reject(error) : resolve(answer),
    );
  });
}

/** ['text', string] or ['binary', Buffer]: the decoded value of a Metadata entry; null when it has none. */
function valueOf(entry) {
  const value = entry.value;
  return value && value.kind ? [value.kind, value[value.kind]] : null;
}

/** The `google.protobuf.Any` details of a google.rpc.Status, each decoded as the type it names. */
function unpackDetails(details) {
  return details.map((any) => {
    const type = rpcProtos.lookupType(any.type_url.replace(/^.*\//, ''));
    return { type: type.fullName.replace(/^\./, ''), message: type.toObject(type.decode(any.value)) };
  });
}

/** Makes a call that must fail with `code`; returns its google.rpc.Status, details unpacked. */
async function failsWith(code, client, method, request, metadata) {
  let answer;
  try {
    answer = await call(client, method, request, metadata);
  } catch (error) {
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === code);
    check(error.code === code, `fails with ${name}`, { code: error.code, details: error.details });
    const [bytes] = error.metadata.get('grpc-status-details-bin');
    check(Buffer.isBuffer(bytes), 'the error carries a google.rpc.Status (grpc-status-details-bin)');
    const status = Status.decode(bytes);
    status.unpacked = unpackDetails(status.details);
    return status;
  }
  check(false, `fails with code ${code}`, answer);
  return null;
}

async function main() {
  const addr = process.env.USERMETA_ADDR;
  const user = bearer(process.env.USER_TOKEN);
  const admin = bearer(process.env.ADMIN_TOKEN);
  const demoUserId = process.env.DEMO_USER_ID;
  if (!addr || !process.env.USER_TOKEN || !process.env.ADMIN_TOKEN || !demoUserId) {
    throw new Error('set USERMETA_ADDR, USER_TOKEN, ADMIN_TOKEN and DEMO_USER_ID');
  }
  console.log(`== node ${process.version}, @grpc/grpc-js ${require('@grpc/grpc-js/package.json').version} against ${addr}`);

  const credentials = grpc.credentials.createInsecure();
  const client = new usermeta.v1.UserMetadataService(addr, credentials);
  const healthClient = new HealthClient(addr, credentials);
  try {
    console.log('-- grpc.health.v1.Health/Check');
    for (const [service, name] of [['', 'the server'], [SERVICE, SERVICE]]) {
      const answer = await call(healthClient, 'Check', { service });
      check(answer.status === 'SERVING', `${name} is SERVING`, answer);
    }

    console.log('-- GetMyMetadata (userinfo)');
    let answer = await call(client, 'GetMyMetadata', {}, user);
    check(answer.user_id === demoUserId, 'user_id is the demo user', answer);
    const contract = answer.metadata.filter((m) => m.key === 'ContractNumber');
    check(
      contract.length === 1 && JSON.stringify(valueOf(contract[0])) === '["text","1234"]',
      'ContractNumber is decoded to the text 1234',
      answer,
    );

    console.log('-- SetMetadata: a text and a binary value on yourself');
    answer = await call(
      client,
      'SetMetadata',
      {
        entries: [
          { key: KEY, value: { text: 'grüße' } },
          { key: `${KEY}.bin`, value: { binary: Buffer.from([0xff, 0x00, 0x01]) } },
        ],
      },
      user,
    );
    check(answer.update_time !== null, 'the write has an update_time', answer);

    console.log('-- GetMyMetadata (auth API, with timestamps) sees both');
    answer = await call(
      client,
      'GetMyMetadata',
      { keys: [KEY, `${KEY}.bin`], source: 'METADATA_SOURCE_AUTH_API' },
      user,
    );
    check(
      JSON.stringify(answer.metadata.map((m) => m.key)) === JSON.stringify([KEY, `${KEY}.bin`]),
      'two entries, ordered by key',
      answer,
    );
    const [textValue, binaryValue] = answer.metadata.map(valueOf);
    check(textValue[0] === 'text' && textValue[1] === 'grüße', 'the text value came back as text', answer);
    check(
      binaryValue[0] === 'binary' && binaryValue[1].equals(Buffer.from([0xff, 0x00, 0x01])),
      'the non-UTF-8 value came back as binary',
      answer,
    );
    check(
      answer.metadata.every((m) => m.create_time !== null && m.update_time !== null),
      'the auth API gives create and update times',
      answer,
    );

    console.log('-- ListMetadata of the demo user, as the admin, one entry a page');
    const listing = {
      user_id: demoUserId,
      key_filter: { key: KEY, match: 'KEY_MATCH_STARTS_WITH' },
      page_size: 1,
    };
    let page = await call(client, 'ListMetadata', listing, admin);
    check(JSON.stringify(page.metadata.map((m) => m.key)) === JSON.stringify([KEY]), `page 1 holds ${KEY}`, page);
    check(page.total_size === '2', 'total_size is 2', page);
    check(page.next_page_token !== '', 'there is a next page', page);
    page = await call(client, 'ListMetadata', { ...listing, page_token: page.next_page_token }, admin);
    check(
      JSON.stringify(page.metadata.map((m) => m.key)) === JSON.stringify([`${KEY}.bin`]) && page.next_page_token === '',
      `page 2 holds ${KEY}.bin and is the last`,
      page,
    );

    console.log('-- FindUsersByMetadata: who holds ContractNumber 1234, as the admin');
    const found = await call(
      client,
      'FindUsersByMetadata',
      { key: 'ContractNumber', value: { text: '1234' } },
      admin,
    );
    check(
      JSON.stringify(found.users.map((u) => u.user_id)) === JSON.stringify([demoUserId]) &&
        found.users[0].organization_id !== '',
      'the demo user, with their organisation',
      found,
    );

    console.log('-- BatchGetMetadata: the demo user and one ZITADEL does not know, as the admin');
    const batch = await call(
      client,
      'BatchGetMetadata',
      { user_ids: [demoUserId, '31415926535'], keys: ['ContractNumber'] },
      admin,
    );
    check(
      JSON.stringify(batch.results.map((r) => r.user_id)) === JSON.stringify([demoUserId, '31415926535']),
      'one result per user, in request order',
      batch,
    );
    check(
      batch.results[0].error === null &&
        JSON.stringify(batch.results[0].metadata.map((m) => [m.key, m.value.text])) ===
          JSON.stringify([['ContractNumber', '1234']]),
      "the demo user's ContractNumber is 1234",
      batch.results[0],
    );
    const missing = batch.results[1].error;
    const missingInfo = missing && unpackDetails(missing.details).find((d) => d.type === 'google.rpc.ErrorInfo');
    check(
      missing !== null && missing.code === grpc.status.NOT_FOUND && missingInfo?.message.reason === 'USER_NOT_FOUND',
      "the unknown user's result is NOT_FOUND with ErrorInfo USER_NOT_FOUND",
      batch.results[1],
    );

    console.log('-- DeleteMetadata both, then they are gone');
    answer = await call(client, 'DeleteMetadata', { keys: [KEY, `${KEY}.bin`] }, user);
    check(answer.update_time !== null, 'the delete has an update_time', answer);
    answer = await call(
      client,
      'GetMyMetadata',
      { keys: [KEY, `${KEY}.bin`], source: 'METADATA_SOURCE_AUTH_API' },
      user,
    );
    check(answer.metadata.length === 0, 'no entries are left', answer);

    console.log('-- an empty key: INVALID_ARGUMENT with a google.rpc.BadRequest');
    let status = await failsWith(
      grpc.status.INVALID_ARGUMENT,
      client,
      'SetMetadata',
      { entries: [{ key: '', value: { text: 'x' } }] },
      user,
    );
    const badRequests = status.unpacked.filter((d) => d.type === 'google.rpc.BadRequest');
    check(
      badRequests.length === 1 &&
        JSON.stringify(badRequests[0].message.field_violations.map((v) => v.field)) === '["entries[0].key"]',
      'the details hold a BadRequest naming entries[0].key',
      status.unpacked,
    );

    console.log('-- no token: UNAUTHENTICATED with a google.rpc.ErrorInfo');
    status = await failsWith(grpc.status.UNAUTHENTICATED, client, 'GetMyMetadata', {}, new grpc.Metadata());
    const infos = status.unpacked.filter((d) => d.type === 'google.rpc.ErrorInfo');
    check(
      infos.length === 1 && infos[0].message.reason === 'TOKEN_MISSING' && infos[0].message.domain === 'usermeta',
      'the details hold ErrorInfo TOKEN_MISSING from domain usermeta',
      status.unpacked,
    );
  } finally {
    client.close();
    healthClient.close();
  }
  console.log('node: ok');
}

main().catch((error) => {
  console.log(`   FAIL ${error.stack || error}`);
  process.exit(1);
});
