// pino logger with credential headers redacted wherever they appear.
import pino from 'pino';

// pino's redact paths need brackets for hyphenated names; `*` covers one level
// of nesting: req.headers and err.headers, then err.config.headers,
// err.request.headers, err.response.headers (HTTP client errors) and req.raw.headers.
export const REDACT_PATHS = [
  'authorization',
  'cookie',
  '["x-api-key"]',
  '*.authorization',
  '*.cookie',
  '*["x-api-key"]',
  '*.headers.authorization',
  '*.headers.cookie',
  '*.headers["x-api-key"]',
  '*.headers["set-cookie"]',
  '*.*.headers.authorization',
  '*.*.headers.cookie',
  '*.*.headers["x-api-key"]',
  '*.*.headers["set-cookie"]',
  // HTTP clients (axios, fetch wrappers) keep the casing the caller wrote.
  '*.headers.Authorization',
  '*.headers.Cookie',
  '*.headers["X-API-Key"]',
  '*.*.headers.Authorization',
  '*.*.headers.Cookie',
  '*.*.headers["X-API-Key"]',
  'key',
  'secret',
  'pepper',
];

export type Logger = pino.Logger;

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'ryvion-authz' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
