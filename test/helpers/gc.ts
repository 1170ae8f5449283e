// A full collection from inside a test (V8's gc, exposed at run time), for tests that measure
// what a structure keeps alive rather than what it allocated.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** process.memoryUsage() after two full collections (the second catches what the first's finalizers freed). */
export function memoryAfterGc(): NodeJS.MemoryUsage {
  gc();
  gc();
  return process.memoryUsage();
}
