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
{{- if or .Values.redis.existingSecret (get .Values.config "REDIS_SENTINELS") (get .Values.config "REDIS_CLUSTER_NODES") }}true{{- end }}
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
DATABASE_URL from the existing Secret (never a value in plain text); the pods and the migration Job use it.
*/}}
{{- define "ryvion-authz.databaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required: the name of an existing Secret with the Postgres URL" .Values.database.existingSecret | quote }}
      key: {{ .Values.database.existingSecretKey | quote }}
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
{{- fail "autoscaling.enabled needs Redis (redis.existingSecret): without it caches and rate limits are per replica, so the service runs one replica only" }}
{{- end }}
{{- if and .Values.keyPepper.previousSecretKey (lt (int .Values.keyPepper.version) 2) }}
{{- fail "keyPepper.previousSecretKey needs keyPepper.version 2 or more (the previous pepper's hashes carry version - 1)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
