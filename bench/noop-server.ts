// The do-nothing Check server: the ceiling of the stack. Same proto (our proto/, loaded by
// @grpc/proto-loader), same runtime (@grpc/grpc-js on Node) and process model (one process),
// same server options; every call is answered OK at once. Run by bench/run.ts as a child.
import * as grpc from '@grpc/grpc-js';
import { authorizationService, type CheckRequest, type CheckResponse } from '../src/transport/grpc/proto.js';

const port = Number(process.env.GRPC_PORT ?? 9191);
const OK: CheckResponse = { status: { code: 0 }, ok_response: { headers: [], headers_to_remove: [], response_headers_to_add: [] } };

const server = new grpc.Server({ 'grpc.max_receive_message_length': 1024 * 1024 });
server.addService(authorizationService(), {
  Check: (_call: grpc.ServerUnaryCall<CheckRequest, CheckResponse>, callback: grpc.sendUnaryData<CheckResponse>) => callback(null, OK),
});
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    process.stderr.write(`noop-server: ${err.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ msg: 'noop ready', port: bound, time: new Date().toISOString() })}\n`);
});
const stop = (): void => server.tryShutdown(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
