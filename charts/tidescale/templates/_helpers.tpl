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

{{/* The image reference: "repository@digest" with image.digest, else "repository:tag", the tag defaulting to the chart's appVersion. */}}
{{- define "tidescale.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount one component (injector, waker) runs as: pass
  (dict "root" $ "component" "waker")
Each component has its own, so the waker's permissions are never the injector's.
*/}}
{{- define "tidescale.componentServiceAccountName" -}}
{{- $sa := index .root.Values .component "serviceAccount" }}
{{- if $sa.create }}
{{- default (printf "%s-%s" (include "tidescale.fullname" .root) .component | trunc 63 | trimSuffix "-") $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* The injector's name: its Deployment, Service and webhook configurations carry it. */}}
{{- define "tidescale.injector.fullname" -}}
{{- printf "%s-injector" (include "tidescale.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tidescale.waker.fullname" -}}
{{- printf "%s-waker" (include "tidescale.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the webhooks' serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "tidescale.injector.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "secret" }}
{{- required "certificates.existingSecret is required with certificates.mode=secret" .Values.certificates.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "tidescale.injector.fullname" .) }}
{{- end }}
{{- end }}

{{/* The names the API server may use for the webhook Service; the certificate must carry all of them. */}}
{{- define "tidescale.injector.dnsNames" -}}
{{- $svc := include "tidescale.injector.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* The agent image: agent.image, each part defaulting to the chart's image. */}}
{{- define "tidescale.agent.image" -}}
{{- $repository := .Values.agent.image.repository | default .Values.image.repository }}
{{- $tag := .Values.agent.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- $digest := .Values.agent.image.digest }}
{{- if and (not $digest) (not .Values.agent.image.repository) (not .Values.agent.image.tag) }}
{{- $digest = .Values.image.digest }}
{{- end }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security Standard, for the pods and containers the chart runs. */}}
{{- define "tidescale.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tidescale.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Pod scheduling of one component: nodeSelector, tolerations, and affinity (the values' own, or a
preferred anti-affinity that spreads the replicas over nodes). Pass (dict "root" $ "component" "waker").
*/}}
{{- define "tidescale.scheduling" -}}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if .root.Values.affinity }}
  {{- toYaml .root.Values.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "tidescale.componentSelectorLabels" . | nindent 14 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
  {{- end }}
{{- end }}
{{- end }}
