{{/* The chart's name, or nameOverride. */}}
{{- define "freshen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Objects' name: fullnameOverride, else the release name (with the chart's name when it lacks it). */}}
{{- define "freshen.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "freshen.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "freshen.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "freshen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "freshen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "freshen.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "freshen.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: freshen
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount freshen runs as. */}}
{{- define "freshen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "freshen.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository with the digest when given, else the tag (default: appVersion). */}}
{{- define "freshen.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The pipeline kinds enabled, as --pipeline-kinds takes them. */}}
{{- define "freshen.pipelineKinds" -}}
{{- $kinds := list }}
{{- if .Values.pipelines.job.enabled }}{{ $kinds = append $kinds "job" }}{{ end }}
{{- if .Values.pipelines.tekton.enabled }}{{ $kinds = append $kinds "tekton" }}{{ end }}
{{- if .Values.pipelines.webhook.enabled }}{{ $kinds = append $kinds "webhook" }}{{ end }}
{{- if $kinds }}{{ join "," $kinds }}{{ else }}none{{ end }}
{{- end }}

{{/* The subject every binding names. */}}
{{- define "freshen.subject" -}}
- kind: ServiceAccount
  name: {{ include "freshen.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/*
renderMode of an optional object whose kind comes from another operator:
prints "true" when it is to be rendered. Usage:
  include "freshen.render" (list . .Values.metrics.serviceMonitor "monitoring.coreos.com/v1/ServiceMonitor")
*/}}
{{- define "freshen.render" -}}
{{- $root := index . 0 }}{{ $cfg := index . 1 }}{{ $api := index . 2 }}
{{- if $cfg.enabled }}
{{- if eq $cfg.renderMode "alwaysRender" }}true
{{- else if $root.Capabilities.APIVersions.Has $api }}true
{{- else if eq $cfg.renderMode "failIfMissing" }}
{{- fail (printf "%s is not served by this cluster (renderMode failIfMissing): install the Prometheus Operator's CRDs, or set renderMode to skipIfMissing or alwaysRender" $api) }}
{{- end }}
{{- end }}
{{- end }}
