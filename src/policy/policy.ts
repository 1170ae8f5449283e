// Route policy: reads the YAML file, validates it (schema.ts, problems located by locator.ts) and
// compiles it into a matcher (matcher.ts) that judges method + path + scope.
import { readFileSync } from 'node:fs';
import { packagePath } from '../paths.js';
import { LineCounter, parseDocument } from 'yaml';
import { Locator, sortProblems } from './locator.js';
import { RoutePolicy, type CompiledPolicy } from './matcher.js';
import { crossCheck, policySchema } from './schema.js';

export type { AuthorizeResult, CompiledPolicy, ModelPrice, Permission, PlanLimits, PlanTokenLimits, RequestLimit, TokenPolicy } from './matcher.js';

export class PolicyError extends Error {
  // Every problem found, sorted by line; `message` is the first so a log line stays one line.
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems[0] ?? 'invalid policy');
    this.name = 'PolicyError';
    this.problems = problems;
  }
}

// Two levels up from src/policy/*.ts (tsx, vitest) and from dist/policy/*.js (tsc) alike.
export const DEFAULT_POLICY_PATH: string = packagePath('policy', 'default.yaml');

export function compilePolicy(yamlText: string, source: string): CompiledPolicy {
  const lineCounter = new LineCounter();
  const doc = parseDocument(yamlText, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new PolicyError(
      doc.errors.map((err) => {
        const line = lineCounter.linePos(err.pos[0]).line;
        // A bare `*` in a method list is the likeliest way to write an alias by accident.
        const hint = err.message.includes('Alias') ? " (write a bare * as '*')" : '';
        return `${source}:${line}: YAML syntax error: ${firstLine(err.message)}${hint}`;
      }),
    );
  }

  let raw: unknown;
  try {
    raw = doc.toJS();
  } catch (err) {
    // toJS throws on alias bombs and unresolvable aliases, which parse leaves in place.
    throw new PolicyError([`${source}:1: ${err instanceof Error ? err.message : String(err)}`]);
  }

  const parsed = policySchema.safeParse(raw);
  const locator = new Locator(doc, lineCounter, source);
  if (!parsed.success) {
    throw new PolicyError(sortProblems(parsed.error.issues.flatMap((issue) => locator.fromIssue(issue))));
  }
  const crossProblems = crossCheck(parsed.data, locator);
  if (crossProblems.length > 0) throw new PolicyError(sortProblems(crossProblems));

  return new RoutePolicy(source, parsed.data);
}

export function loadPolicyFile(path: string): CompiledPolicy {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const reason = err instanceof Error && 'code' in err ? String(err.code) : String(err);
    throw new PolicyError([`${path}: cannot read policy file: ${reason}`]);
  }
  return compilePolicy(text, path);
}

function firstLine(text: string): string {
  return text.split('\n', 1)[0] ?? text;
}
