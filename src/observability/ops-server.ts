// Operations port: /metrics (Prometheus text), /healthz (alive + store health), /readyz.
import http from 'node:http';
import type { HealthState } from './health.js';
import type { Metrics } from './metrics.js';

export function createOpsServer(metrics: Metrics, health: HealthState): http.Server {
  return http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    switch (url) {
      case '/metrics':
        metrics.registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
          () => res.writeHead(500).end(),
        );
        return;
      case '/healthz':
        json(res, 200, { status: 'alive', ...health.snapshot() });
        return;
      case '/readyz':
        json(res, health.ready ? 200 : 503, { ready: health.ready });
        return;
      default:
        json(res, 404, { error: 'not found' });
    }
  });
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

export function listenHttp(server: http.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const addr = server.address();
      resolve(typeof addr === 'object' && addr ? addr.port : port);
    });
  });
}

export function closeHttp(server: http.Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}
