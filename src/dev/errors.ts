// The error `dev` fails with when its embedded Postgres cannot be set up or started.
import { StartupError } from '../service.js';

export class EmbeddedPostgresError extends StartupError {
  override name = 'EmbeddedPostgresError';
}
