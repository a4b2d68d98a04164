{{/*
Helpers shared by every template. All are prefixed "tidescale." so they never
clash with a parent chart's helpers.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tidescale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, or "<release>-<chart>", or just
the release name when it already contains the chart name. 63 characters at most
(the DNS label limit Kubernetes enforces on many names).
*/}}
{{- define "tidescale.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label ("+" is not allowed in label values). */}}
{{- define "tidescale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select a component's pods: never change them on upgrade (selectors are immutable). */}}
{{- define "tidescale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidescale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every resource: the selector labels plus version, chart and manager. */}}
{{- define "tidescale.labels" -}}
{{ include "tidescale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tidescale
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "tidescale.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels and selector labels of one component (injector, waker): pass a dict with the
root context and the component name, e.g.
  include "tidescale.componentLabels" (dict "root" $ "component" "injector")
*/}}
{{- define "tidescale.componentLabels" -}}
{{ include "tidescale.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tidescale.componentSelectorLabels" -}}
{{ include "tidescale.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The ServiceAccount the injector and the waker run as. */}}
{{- define "tidescale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tidescale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference, "repository:tag", the tag defaulting to the chart's appVersion. */}}
{{- define "tidescale.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
