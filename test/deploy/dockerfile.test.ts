// The Dockerfile, read as text (no Docker engine here): stages, base image, the same build as CI,
// production-only dependencies, non-root numeric user, exec-form entrypoint, and a build context
// (.dockerignore) that keeps everything the Dockerfile copies.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { buildProgram } from '../../src/cli/main.js';
import { ROOT } from './helm.js';

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Splits a Dockerfile into instructions: comments dropped, `\` continuations joined. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let buffer = '';
  let startLine = 0;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trimEnd();
    if (buffer === '' && (line.trim() === '' || line.trimStart().startsWith('#'))) return;
    if (buffer !== '' && line.trimStart().startsWith('#')) return; // comment inside a continuation
    if (buffer === '') startLine = i + 1;
    if (line.endsWith('\\')) {
      buffer += `${line.slice(0, -1).trim()} `;
      return;
    }
    buffer += line.trim();
    const m = /^(\S+)\s*([\s\S]*)$/.exec(buffer);
    if (m) out.push({ keyword: m[1]!.toUpperCase(), args: m[2]!.trim(), line: startLine });
    buffer = '';
  });
  return out;
}

function stagesOf(instructions: Instruction[]): Stage[] {
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m) throw new Error(`line ${ins.line}: cannot read FROM ${ins.args}`);
      stages.push({ from: m[1]!, name: m[2], instructions: [] });
    } else {
      if (stages.length === 0 && ins.keyword !== 'ARG') throw new Error(`line ${ins.line}: ${ins.keyword} before FROM`);
      stages.at(-1)?.instructions.push(ins);
    }
  }
  return stages;
}

/** A JSON array (exec form) or undefined (shell form). */
function execForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  const parsed: unknown = JSON.parse(args);
  return Array.isArray(parsed) && parsed.every((a) => typeof a === 'string') ? parsed : undefined;
}

/** `COPY [--from=x] [--chown=..] src... dest` -> sources, destination and --from. */
function copyOf(ins: Instruction): { from: string | undefined; sources: string[]; dest: string } {
  const words = ins.args.split(/\s+/);
  let from: string | undefined;
  while (words[0]?.startsWith('--')) {
    const flag = words.shift()!;
    if (flag.startsWith('--from=')) from = flag.slice('--from='.length);
  }
  const dest = words.pop()!;
  return { from, sources: words, dest };
}

/** The npm commands of RUN instructions, split on && and ;. */
function npmCommands(stage: Stage): string[][] {
  return stage.instructions
    .filter((i) => i.keyword === 'RUN')
    .flatMap((i) => i.args.split(/&&|;/))
    .map((c) => c.trim().split(/\s+/))
    .filter((words) => words[0] === 'npm');
}

const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const instructions = parseDockerfile(dockerfile);
const stages = stagesOf(instructions);
const build = stages[0]!;
const runtime = stages.at(-1)!;
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  scripts: Record<string, string>;
  files: string[];
  bin: Record<string, string>;
};
const ciRun = readFileSync(join(ROOT, '.ci', 'run'), 'utf8');

describe('Dockerfile', () => {
  it('is multi-stage on the official slim image of the Node major this suite runs on (no image on an untested runtime)', () => {
    const tested = process.versions.node.split('.')[0];
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const s of stages) expect(s.from, `FROM ${s.from}; the tests run on Node ${process.versions.node}`).toMatch(new RegExp(`^node:${tested}-[a-z]+-slim(@sha256:[0-9a-f]{64})?$`));
    expect(build.name).toBeDefined();
    // The runtime stage starts from the base again, not from the build stage.
    expect(stages.map((s) => s.name)).not.toContain(runtime.from);
  });

  it('builds with the same commands as CI: npm ci, then npm run build', () => {
    const ciInstall = /^\s*npm ci\b([^\n|&;]*)/m.exec(ciRun);
    expect(ciInstall, '.ci/run installs with npm ci').not.toBeNull();
    const ciFlags = ciInstall![1]!.trim().split(/\s+/).filter(Boolean);
    const commands = npmCommands(build);
    const ci = commands.find((c) => c[1] === 'ci');
    expect(ci, 'npm ci in the build stage').toBeDefined();
    for (const flag of ciFlags) expect(ci).toContain(flag);
    expect(ci).not.toContain('--omit=dev'); // the build needs the compiler
    expect(commands.some((c) => c.join(' ') === 'npm run build')).toBe(true);
    // CI's `npm ci` builds through `prepare`: the same script.
    expect(pkg.scripts.build).toBeDefined();
    expect(pkg.scripts.prepare).toContain('npm run build');
    // What the build reads is in the stage: tsconfig.json and the directories it includes.
    const tsconfig = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { include: string[] };
    const copied = build.instructions.filter((i) => i.keyword === 'COPY').flatMap((i) => copyOf(i).sources);
    expect(copied).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'tsconfig.json']));
    for (const inc of tsconfig.include) expect(copied).toContain(inc.split('/')[0]);
  });

  it('installs production dependencies only in the final stage and copies what the package ships', () => {
    const commands = npmCommands(runtime);
    const ci = commands.find((c) => c[1] === 'ci');
    expect(ci).toBeDefined();
    expect(ci).toEqual(expect.arrayContaining(['--omit=dev', '--ignore-scripts']));
    expect(commands.some((c) => c[1] === 'run')).toBe(false);
    const copies = runtime.instructions.filter((i) => i.keyword === 'COPY').map(copyOf);
    const distCopy = copies.find((c) => c.from === build.name && c.sources.some((s) => s.endsWith('/dist')));
    expect(distCopy, 'dist/ comes from the build stage').toBeDefined();
    const copiedNames = copies.flatMap((c) => c.sources.map((s) => s.split('/').filter(Boolean).at(-1)));
    // Everything package.json "files" names (bin, dist, proto, migrations, policy) is in the image.
    for (const f of pkg.files) expect(copiedNames, `package.json files: ${f}`).toContain(f);
    expect(copiedNames).toEqual(expect.arrayContaining(['package.json', 'package-lock.json']));
    expect(copiedNames).not.toContain('src');
    expect(copiedNames).not.toContain('node_modules');
  });

  it('runs as a non-root numeric user that the chart also uses', () => {
    const users = runtime.instructions.filter((i) => i.keyword === 'USER');
    expect(users.length).toBeGreaterThan(0);
    const user = users.at(-1)!;
    const m = /^(\d+)(?::(\d+))?$/.exec(user.args);
    expect(m, `USER ${user.args} is numeric (Kubernetes can check runAsNonRoot)`).not.toBeNull();
    const uid = Number(m![1]);
    expect(uid).toBeGreaterThan(0);
    if (m![2] !== undefined) expect(Number(m![2])).toBeGreaterThan(0);
    // No RUN after USER: installs run as root, the service never does.
    const lastRun = Math.max(...runtime.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.line));
    expect(user.line).toBeGreaterThan(lastRun);
    const values = parse(readFileSync(join(ROOT, 'helm', 'ryvion-authz', 'values.yaml'), 'utf8')) as {
      podSecurityContext: { runAsUser: number };
      securityContext: { runAsUser: number };
    };
    expect(values.podSecurityContext.runAsUser).toBe(uid);
    expect(values.securityContext.runAsUser).toBe(uid);
  });

  it('starts node directly in exec form (PID 1 gets SIGTERM) with a command the CLI has', () => {
    const entrypoint = runtime.instructions.filter((i) => i.keyword === 'ENTRYPOINT').at(-1);
    const cmd = runtime.instructions.filter((i) => i.keyword === 'CMD').at(-1);
    expect(entrypoint).toBeDefined();
    expect(cmd).toBeDefined();
    const ep = execForm(entrypoint!.args);
    const args = execForm(cmd!.args);
    expect(ep, 'ENTRYPOINT in exec form').toBeDefined();
    expect(args, 'CMD in exec form').toBeDefined();
    expect(ep![0]).toBe('node');
    expect([...ep!, ...args!].some((a) => /^(\/bin\/)?(ba)?sh$/.test(a) || a === '-c')).toBe(false);
    // The script is the package's bin, shipped in the image.
    const script = ep![1]!;
    expect(Object.values(pkg.bin)).toContain(script);
    expect(existsSync(join(ROOT, script))).toBe(true);
    expect(pkg.files).toContain(script.split('/')[0]);
    const commands = buildProgram({}).commands.map((c) => c.name());
    expect(commands).toContain(args![0]);
    expect(args![0]).toBe('serve');
    // Any HEALTHCHECK is exec form too (no shell in the path).
    for (const h of runtime.instructions.filter((i) => i.keyword === 'HEALTHCHECK')) {
      const m = /CMD\s+(\[.*\])$/s.exec(h.args);
      expect(m && execForm(m[1]!), 'HEALTHCHECK CMD in exec form').toBeTruthy();
    }
    // Secrets never come from the image.
    const env = runtime.instructions.filter((i) => i.keyword === 'ENV').map((i) => i.args).join(' ');
    expect(env).not.toMatch(/DATABASE_URL|KEY_PEPPER|REDIS_URL/);
  });

  it('keeps a build context (.dockerignore) without local state but with everything COPY needs', () => {
    const patterns = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    for (const p of ['node_modules', 'dist', '.git']) expect(patterns).toContain(p);
    const toRegExp = (p: string) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}(/.*)?$`);
    const ignored = (path: string) => {
      let out = false;
      for (const p of patterns) {
        if (p.startsWith('!')) {
          if (toRegExp(p.slice(1)).test(path)) out = false;
        } else if (toRegExp(p).test(path)) out = true;
      }
      return out;
    };
    const sources = stages
      .flatMap((s) => s.instructions)
      .filter((i) => i.keyword === 'COPY')
      .map(copyOf)
      .filter((c) => c.from === undefined)
      .flatMap((c) => c.sources);
    expect(sources.length).toBeGreaterThan(0);
    for (const s of sources) {
      expect(ignored(s), `${s} is excluded by .dockerignore`).toBe(false);
      expect(existsSync(join(ROOT, s)), `${s} exists`).toBe(true);
    }
  });
});
