{{/*
Names are fixed, not derived from the release name: one Leitstand per cluster (its CRDs, priority
classes and ClusterRoles are cluster-wide), and deploy/ must name everything the same way.
*/}}

{{/* The labels a pod selector uses: stable across upgrades and equal in deploy/operator.yaml. */}}
{{- define "leitstand.selectorLabels" -}}
app.kubernetes.io/name: leitstand
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels only a Helm release has; deploy/ leaves exactly these out (operator/cluster/helm.py). */}}
{{- define "leitstand.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Every object of the chart (deploy/ labels its objects app.kubernetes.io/part-of: leitstand). */}}
{{- define "leitstand.labels" -}}
app.kubernetes.io/part-of: leitstand
{{ include "leitstand.releaseLabels" . }}
{{- end }}

{{/* The operator's Deployment, Service, ConfigMap, PodDisruptionBudget. */}}
{{- define "leitstand.operatorLabels" -}}
{{ include "leitstand.selectorLabels" . }}
{{ include "leitstand.labels" . }}
{{- end }}

{{- define "leitstand.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "leitstand.serviceAccountName" -}}
leitstand-operator
{{- end }}

{{/* The API port: the container port, the probes, the Service and `api.port` of the config. */}}
{{- define "leitstand.apiPort" -}}
{{- $port := int (dig "api" "port" 8080 .Values.config) -}}
{{- if le $port 0 -}}
{{- fail (printf "config.api.port: must be a fixed port (1-65535) for the probes and the Service, not %d" $port) -}}
{{- end -}}
{{ $port }}
{{- end }}

{{/*
The service configuration as `leitstand run --config` reads it: `config` as given, plus what only
the chart knows (the release namespace; the API listening on the pod IP, always on).
*/}}
{{- define "leitstand.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $api := deepCopy (.Values.config.api | default dict) -}}
{{- $_ := set $api "enabled" true -}}
{{- $_ := set $api "host" "0.0.0.0" -}}
{{- $_ := set $api "port" (int (include "leitstand.apiPort" .)) -}}
{{- $_ := set $config "api" $api -}}
{{- $_ := set $config "system_namespace" .Release.Namespace -}}
{{ toYaml $config }}
{{- end }}

{{/* Whether /metrics wants a token (the service's default: yes). */}}
{{- define "leitstand.metricsRequireToken" -}}
{{- if hasKey (.Values.config.api | default dict) "metrics_require_token" -}}
{{ .Values.config.api.metrics_require_token }}
{{- else -}}
true
{{- end -}}
{{- end }}
