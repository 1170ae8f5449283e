// Public identifiers for accounts and keys: a type prefix plus random base62.
import { randomBase62 } from './format.js';

export const newAccountId = (): string => `acct_${randomBase62(20)}`;
export const newKeyId = (): string => `key_${randomBase62(20)}`;

const ID_SHAPE = /^(acct|key)_[0-9A-Za-z]{20}$/;
export const isAccountId = (s: string): boolean => ID_SHAPE.test(s) && s.startsWith('acct_');
export const isKeyId = (s: string): boolean => ID_SHAPE.test(s) && s.startsWith('key_');
