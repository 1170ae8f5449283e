// A copy of the shipped policy with test-sized rate-limit plans, written to a temp file for POLICY_FILE.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_POLICY_PATH } from '../../src/policy/policy.js';

/** `plans` is the YAML that replaces the default file's `plans:` section (to its end, `default_plan` included). */
export function policyWithPlans(plans: string): { file: string; dispose: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-policy-'));
  const file = path.join(dir, 'policy.yaml');
  writeFileSync(file, readFileSync(DEFAULT_POLICY_PATH, 'utf8').replace(/^plans:[\s\S]*$/m, plans));
  return { file, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}
