{{/* Chart name, truncated to 63 characters. */}}
{{- define "smtp-relay-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "smtp-relay-operator.fullname" -}}
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

{{- define "smtp-relay-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods (immutable in the Deployment). */}}
{{- define "smtp-relay-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smtp-relay-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "smtp-relay-operator.labels" -}}
helm.sh/chart: {{ include "smtp-relay-operator.chart" . }}
{{ include "smtp-relay-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smtp-relay-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "smtp-relay-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smtp-relay-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] from an image block, with fallbacks. */}}
{{- define "smtp-relay-operator.imageRef" -}}
{{- $repo := .image.repository | default .fallback.repository -}}
{{- $tag := .image.tag | default .fallback.tag | default .appVersion -}}
{{- /* A digest belongs to one repository: inherit it only along with the repository. */ -}}
{{- $digest := .image.digest | default (ternary .fallback.digest "" (empty .image.repository)) -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end }}

{{- define "smtp-relay-operator.image" -}}
{{- include "smtp-relay-operator.imageRef" (dict "image" .Values.image "fallback" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "smtp-relay-operator.relayImage" -}}
{{- include "smtp-relay-operator.imageRef" (dict "image" .Values.relayImage "fallback" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* Name of the metrics Service: also the `job` label Prometheus gives the operator's targets. */}}
{{- define "smtp-relay-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "smtp-relay-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The rules of operator/rbac/clusterrole.yaml (copied to files/rbac/ by `make chart-sync`). */}}
{{- define "smtp-relay-operator.rules" -}}
{{- $cr := .Files.Get "files/rbac/clusterrole.yaml" | fromYaml }}
{{- if not $cr.rules }}{{ fail "files/rbac/clusterrole.yaml has no rules (run make chart-sync)" }}{{ end }}
{{- toYaml $cr.rules }}
{{- end }}

{{- define "smtp-relay-operator.leaderRules" -}}
{{- $r := .Files.Get "files/rbac/role-leader-election.yaml" | fromYaml }}
{{- if not $r.rules }}{{ fail "files/rbac/role-leader-election.yaml has no rules (run make chart-sync)" }}{{ end }}
{{- toYaml $r.rules }}
{{- end }}

{{/* Cross-field checks the schema cannot express; each fails with what to change. */}}
{{- define "smtp-relay-operator.validate" -}}
{{- $le := .Values.leaderElection }}
{{- if and (gt (int .Values.replicaCount) 1) (not $le.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile" }}
{{- end }}
{{- if $le.enabled }}
{{- if not (lt (float64 $le.renewDeadline) (float64 $le.leaseDuration)) }}
{{- fail (printf "leaderElection.renewDeadline (%v) must be less than leaderElection.leaseDuration (%v)" $le.renewDeadline $le.leaseDuration) }}
{{- end }}
{{- if not (lt (float64 $le.retryPeriod) (float64 $le.renewDeadline)) }}
{{- fail (printf "leaderElection.retryPeriod (%v) must be less than leaderElection.renewDeadline (%v)" $le.retryPeriod $le.renewDeadline) }}
{{- end }}
{{- end }}
{{- if and .Values.watchNamespaces (not .Values.rbac.create) }}
{{- /* fine: the user brings RBAC */ -}}
{{- end }}
{{- end }}
