// Turns a place in the policy's YAML document into "file:line: path: what", for every problem found.
import { isMap, isNode, isScalar, type Document, type LineCounter } from 'yaml';
import type { z } from 'zod';

export type PathKey = string | number;


export interface Problem {
  line: number;
  text: string;
}

// Turns a path into the YAML document into "file:line: path: what".
export class Locator {
  constructor(
    private readonly doc: Document,
    private readonly lineCounter: LineCounter,
    private readonly source: string,
  ) {}

  fromIssue(issue: z.core.$ZodIssue): Problem[] {
    const path = issue.path.filter((key): key is PathKey => typeof key === 'string' || typeof key === 'number');
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => this.atKey(path, key, `unknown key ${JSON.stringify(key)}`));
    }
    const last = path.at(-1);
    if (issue.code === 'invalid_type' && last !== undefined && !this.doc.hasIn(path)) {
      return [this.at(path.slice(0, -1), `missing required key ${JSON.stringify(String(last))}`)];
    }
    return [this.at(path, issue.message.replace(/^Invalid input: /, ''))];
  }

  at(path: readonly PathKey[], what: string): Problem {
    return this.problem(this.lineOf(path), path, what);
  }

  // Points at the key itself, since the complaint is about the key and not its value.
  atKey(mapPath: readonly PathKey[], key: string, what: string): Problem {
    const map = mapPath.length === 0 ? this.doc.contents : this.doc.getIn(mapPath, true);
    if (isMap(map)) {
      const pair = map.items.find((item) => isScalar(item.key) && String(item.key.value) === key);
      if (pair && isNode(pair.key) && pair.key.range) {
        return this.problem(this.lineCounter.linePos(pair.key.range[0]).line, mapPath, what);
      }
    }
    return this.problem(this.lineOf(mapPath), mapPath, what);
  }

  private lineOf(path: readonly PathKey[]): number {
    for (let n = path.length; n >= 0; n--) {
      const node = n === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, n), true);
      if (isNode(node) && node.range) return this.lineCounter.linePos(node.range[0]).line;
    }
    return 1;
  }

  private problem(line: number, path: readonly PathKey[], what: string): Problem {
    const where = formatPath(path);
    return { line, text: `${this.source}:${line}: ${where === '' ? '' : `${where}: `}${what}` };
  }
}

function formatPath(path: readonly PathKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? key : `.${key}`;
  }
  return out;
}

export function sortProblems(problems: Problem[]): string[] {
  return problems.sort((a, b) => a.line - b.line).map((p) => p.text);
}
