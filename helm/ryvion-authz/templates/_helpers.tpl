{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "ryvion-authz.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name already contains it.
With release "ryvion-authz" the full name (and the Service) is "ryvion-authz".
*/}}
{{- define "ryvion-authz.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "ryvion-authz.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "ryvion-authz.labels" -}}
helm.sh/chart: {{ include "ryvion-authz.chart" . }}
{{ include "ryvion-authz.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ryvion
{{- end }}

{{/*
Selector labels (stable across upgrades: never add to them).
*/}}
{{- define "ryvion-authz.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ryvion-authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The pods' selector labels: the service pods carry component "server", the migration Job "migrate",
so Service, PDB and NetworkPolicy never select the Job.
*/}}
{{- define "ryvion-authz.serverSelectorLabels" -}}
{{ include "ryvion-authz.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "ryvion-authz.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ryvion-authz.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ryvion-authz.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
"true" when the replicas share a Redis (single node, Sentinel or Cluster), else "".
*/}}
{{- define "ryvion-authz.redisEnabled" -}}
{{- if or .Values.redis.existingSecret .Values.redis.sentinel.addresses .Values.redis.cluster.nodes }}true{{- end }}
{{- end }}

{{/*
Service DNS names: the ClusterIP Service, and the headless one that resolves to every ready pod.
*/}}
{{- define "ryvion-authz.fqdn" -}}
{{- printf "%s.%s.svc.%s" (include "ryvion-authz.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "ryvion-authz.headlessName" -}}
{{- printf "%s-headless" (include "ryvion-authz.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "ryvion-authz.headlessFqdn" -}}
{{- printf "%s.%s.svc.%s" (include "ryvion-authz.headlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
The gRPC address a plain Envoy resolves with STRICT_DNS: the headless Service when there is one
(one endpoint per pod, so each Check is balanced), else the ClusterIP Service.
*/}}
{{- define "ryvion-authz.grpcDnsName" -}}
{{- if .Values.service.headless.enabled }}{{ include "ryvion-authz.headlessFqdn" . }}{{ else }}{{ include "ryvion-authz.fqdn" . }}{{ end }}
{{- end }}

{{- define "ryvion-authz.redisCaDir" -}}/etc/ryvion-authz/redis-tls{{- end }}

{{/*
The Redis environment of the pods: the URL, or Sentinel / Cluster with credentials from Secrets and TLS.
*/}}
{{- define "ryvion-authz.redisEnv" -}}
{{- $r := .Values.redis }}
{{- if $r.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $r.existingSecret | quote }}
      key: {{ $r.existingSecretKey | quote }}
{{- end }}
{{- if $r.sentinel.addresses }}
- name: REDIS_SENTINELS
  value: {{ join "," $r.sentinel.addresses | quote }}
- name: REDIS_SENTINEL_NAME
  value: {{ required "redis.sentinel.masterName is required with redis.sentinel.addresses (the name of the monitored master)" $r.sentinel.masterName | quote }}
{{- with $r.sentinel.username }}
- name: REDIS_SENTINEL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if $r.sentinel.existingSecret }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.sentinel.existingSecret | quote }}
      key: {{ $r.sentinel.existingSecretKey | quote }}
{{- end }}
{{- end }}
{{- if $r.cluster.nodes }}
- name: REDIS_CLUSTER_NODES
  value: {{ join "," $r.cluster.nodes | quote }}
{{- end }}
{{- with $r.auth.username }}
- name: REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if $r.auth.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.auth.existingSecret | quote }}
      key: {{ $r.auth.existingSecretKey | quote }}
{{- end }}
{{- if $r.tls.enabled }}
- name: REDIS_TLS
  value: "true"
{{- end }}
{{- if $r.tls.caExistingSecret }}
- name: REDIS_TLS_CA_FILE
  value: {{ printf "%s/ca.crt" (include "ryvion-authz.redisCaDir" .) | quote }}
{{- end }}
{{- with $r.tls.serverName }}
- name: REDIS_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The Postgres connection budget (docs/production.md): connections that reach the Postgres server at
the worst moment, the autoscaler at its maximum during a rolling update. Prints "total|formula".
*/}}
{{- define "ryvion-authz.connectionBudget" -}}
{{- $db := .Values.database }}
{{- $pool := int (default 10 (get .Values.config "DATABASE_POOL_MAX")) }}
{{- $replicas := ternary (int .Values.autoscaling.maxReplicas) (int (include "ryvion-authz.replicas" .)) .Values.autoscaling.enabled }}
{{- $surge := 1 }}
{{- /* Behind a pooler the pool counts against the pooler; the listener reaches Postgres when it has its own URL. */}}
{{- $poolPart := ternary 0 $pool $db.behindPooler }}
{{- $listener := ternary 0 1 (and $db.behindPooler (not $db.listenUrl.existingSecretKey)) }}
{{- $migration := ternary 1 0 .Values.migration.enabled }}
{{- $cli := 3 }}
{{- $reserved := int $db.reservedConnections }}
{{- $other := int $db.otherConnections }}
{{- $total := add (mul (add $replicas $surge) (add $poolPart $listener)) $migration $cli $reserved $other }}
{{- printf "%d|(%s %d + surge %d) x (DATABASE_POOL_MAX %d + listener %d) + migration Job %d + CLI %d + reserved %d + other %d = %d" $total (ternary "autoscaling.maxReplicas" "replicas" .Values.autoscaling.enabled) $replicas $surge $poolPart $listener $migration $cli $reserved $other $total }}
{{- end }}


{{/*
Replica count of the Deployment: one without Redis (caches and limits are per replica).
*/}}
{{- define "ryvion-authz.replicas" -}}
{{- if include "ryvion-authz.redisEnabled" . }}{{ .Values.replicaCount }}{{ else }}1{{ end }}
{{- end }}

{{- define "ryvion-authz.policyConfigMapName" -}}
{{- default (printf "%s-policy" (include "ryvion-authz.fullname" .)) .Values.policy.existingConfigMap }}
{{- end }}

{{- define "ryvion-authz.policyFile" -}}
{{- printf "%s/policy.yaml" (trimSuffix "/" .Values.policy.mountPath) }}
{{- end }}

{{/*
The x-ryvion-meta-* headers of the policy's `forward_metadata` fields, one YAML list item a line
(empty: none): the fields of the chart's own policy content, plus proxyExamples.forwardMetadata
(for a policy the chart does not see, policy.existingConfigMap). The proxy examples remove them
where ext_authz does not run, as they remove the identity headers. The name is the service's
(src/check/metadata-forward.ts): lower case, "_" written "-".
*/}}
{{- define "ryvion-authz.metaHeaders" -}}
{{- $fields := list }}
{{- if not .Values.policy.existingConfigMap }}
{{- $policy := fromYaml (.Values.policy.content | default (.Files.Get "files/policy.yaml")) }}
{{- $fields = concat $fields ($policy.forward_metadata | default list) }}
{{- end }}
{{- $fields = concat $fields (.Values.proxyExamples.forwardMetadata | default list) }}
{{- $headers := list }}
{{- range $fields }}
{{- $headers = append $headers (printf "x-ryvion-meta-%s" (. | toString | lower | replace "_" "-")) }}
{{- end }}
{{- range uniq $headers }}
{{ printf "- %s" . }}
{{- end }}
{{- end }}

{{/*
DATABASE_URL from the existing Secret (never a value in plain text); the pods and the migration Job use it.
DATABASE_LISTEN_URL (the pods only) when database.listenUrl names a key.
*/}}
{{- define "ryvion-authz.databaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required: the name of an existing Secret with the Postgres URL" .Values.database.existingSecret | quote }}
      key: {{ .Values.database.existingSecretKey | quote }}
{{- end }}

{{- define "ryvion-authz.databaseListenUrlEnv" -}}
{{- with .Values.database.listenUrl.existingSecretKey }}
- name: DATABASE_LISTEN_URL
  valueFrom:
    secretKeyRef:
      name: {{ default $.Values.database.existingSecret $.Values.database.listenUrl.existingSecret | quote }}
      key: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Checks across values that the schema cannot express; fails the render with a clear line.
*/}}
{{- define "ryvion-authz.validate" -}}
{{- $needed := divf (addf .Values.shutdown.readinessDelayMs .Values.shutdown.drainMs) 1000 }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed (shutdown.readinessDelayMs + shutdown.drainMs) / 1000 = %v: Kubernetes would kill pods before they drain" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (include "ryvion-authz.redisEnabled" .)) }}
{{- fail "autoscaling.enabled needs Redis (redis.existingSecret, redis.sentinel.addresses or redis.cluster.nodes): without it caches and rate limits are per replica, so the service runs one replica only" }}
{{- end }}
{{- if and .Values.keyPepper.previousSecretKey (lt (int .Values.keyPepper.version) 2) }}
{{- fail "keyPepper.previousSecretKey needs keyPepper.version 2 or more (the previous pepper's hashes carry version - 1)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- $r := .Values.redis }}
{{- if gt (len (compact (list $r.existingSecret (join "," $r.sentinel.addresses) (join "," $r.cluster.nodes)))) 1 }}
{{- fail "redis: set only one of redis.existingSecret (a URL), redis.sentinel.addresses and redis.cluster.nodes" }}
{{- end }}
{{- if and $r.existingSecret (or $r.auth.username $r.auth.existingSecret $r.tls.enabled) }}
{{- fail "redis.auth and redis.tls.enabled are for Sentinel and Cluster: with redis.existingSecret put the credentials in the URL (redis://user:password@host:6379) and use rediss:// for TLS" }}
{{- end }}
{{- if and $r.auth.username (not $r.auth.existingSecret) }}
{{- fail "redis.auth.username needs redis.auth.existingSecret (the Secret with that user's password)" }}
{{- end }}
{{- if and $r.sentinel.username (not $r.sentinel.existingSecret) }}
{{- fail "redis.sentinel.username needs redis.sentinel.existingSecret (the Secret with Sentinel's password)" }}
{{- end }}
{{- if and (or $r.sentinel.username $r.sentinel.existingSecret) (not $r.sentinel.addresses) }}
{{- fail "redis.sentinel credentials need redis.sentinel.addresses" }}
{{- end }}
{{- if and (or $r.tls.caExistingSecret $r.tls.serverName) (not $r.tls.enabled) (not $r.existingSecret) }}
{{- fail "redis.tls.caExistingSecret and redis.tls.serverName need redis.tls.enabled (Sentinel, Cluster) or a rediss:// URL in redis.existingSecret" }}
{{- end }}
{{- if gt (int .Values.database.maxConnections) 0 }}
{{- $budget := splitList "|" (include "ryvion-authz.connectionBudget" .) }}
{{- if gt (int (first $budget)) (int .Values.database.maxConnections) }}
{{- fail (printf "Postgres connection budget %s exceeds database.maxConnections (%d). Lower autoscaling.maxReplicas or config.DATABASE_POOL_MAX, raise database.maxConnections to the server's max_connections, or put PgBouncer in front (database.behindPooler, database.listenUrl); see docs/production.md" (last $budget) (int .Values.database.maxConnections)) }}
{{- end }}
{{- end }}
{{- end }}
