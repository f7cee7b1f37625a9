{{/*
Name of the chart, or nameOverride.
*/}}
{{- define "tutti.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut to 63 characters because some Kubernetes
name fields are limited to that (DNS label).
*/}}
{{- define "tutti.fullname" -}}
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

{{- define "tutti.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tutti.labels" -}}
helm.sh/chart: {{ include "tutti.chart" . }}
{{ include "tutti.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tutti.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tutti.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tutti.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tutti.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The gateway's configuration file as JSON. The chart owns the listener
addresses and the drain timings, so that the probes, ports and
terminationGracePeriodSeconds of the Deployment always match them.
*/}}
{{- define "tutti.config" -}}
{{- $g := .Values.gateway }}
{{- if eq (int $g.port) (int $g.adminPort) }}
{{- fail (printf "gateway.port and gateway.adminPort are both %d: give the admin listener a port of its own" (int $g.port)) }}
{{- end }}
{{- $cfg := deepCopy $g.extraConfig }}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int $g.port)) }}
{{- $_ = set $cfg "admin" (dict "listen" (printf "0.0.0.0:%d" (int $g.adminPort))) }}
{{- $_ = set $cfg "drain_delay_ms" (int64 $g.drainDelayMs) }}
{{- $_ = set $cfg "shutdown_grace_ms" (int64 $g.shutdownGraceMs) }}
{{- $_ = set $cfg "services" $g.services }}
{{- $_ = set $cfg "routes" $g.routes }}
{{- toPrettyJson $cfg }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the drain delay plus the shutdown grace,
rounded up to whole seconds, plus a margin, so that the kubelet's SIGKILL
never cuts the drain short.
*/}}
{{- define "tutti.terminationGracePeriodSeconds" -}}
{{- $g := .Values.gateway }}
{{- $ms := add (int64 $g.drainDelayMs) (int64 $g.shutdownGraceMs) 999 }}
{{- add (div $ms 1000) (int64 .Values.terminationGraceExtraSeconds) }}
{{- end }}
