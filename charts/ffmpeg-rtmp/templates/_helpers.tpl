{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "ffmpeg-rtmp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, suffixed with the chart name unless it already
contains it. Truncated to 54 characters so that "-operator"/"-worker" suffixes still fit in 63.
*/}}
{{- define "ffmpeg-rtmp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "ffmpeg-rtmp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of every object.
*/}}
{{- define "ffmpeg-rtmp.labels" -}}
helm.sh/chart: {{ include "ffmpeg-rtmp.chart" . }}
{{ include "ffmpeg-rtmp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ffmpeg-rtmp
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (stable across upgrades).
*/}}
{{- define "ffmpeg-rtmp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ffmpeg-rtmp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels / selector labels of the operator's objects.
*/}}
{{- define "ffmpeg-rtmp.operator.labels" -}}
{{ include "ffmpeg-rtmp.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ffmpeg-rtmp.operator.selectorLabels" -}}
{{ include "ffmpeg-rtmp.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ffmpeg-rtmp.worker.labels" -}}
{{ include "ffmpeg-rtmp.labels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
Common annotations as a metadata fragment, indented for metadata and starting with a newline;
empty when there are none. Call as `{{- include "ffmpeg-rtmp.annotations" (dict "root" $ "extra" X) }}`
right after the labels block.
*/}}
{{- define "ffmpeg-rtmp.annotations" -}}
{{- $all := merge (dict) (.extra | default dict) (.root.Values.commonAnnotations | default dict) }}
{{- with $all }}
{{ printf "annotations:\n%s" (toYaml . | indent 2) | indent 2 }}
{{- end }}
{{- end }}

{{/*
Operator Service name; it is also the `job` label Prometheus gives the operator's metrics.
*/}}
{{- define "ffmpeg-rtmp.operator.serviceName" -}}
{{- printf "%s-operator" (include "ffmpeg-rtmp.fullname" .) }}
{{- end }}

{{/*
ServiceAccount names.
*/}}
{{- define "ffmpeg-rtmp.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "ffmpeg-rtmp.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ffmpeg-rtmp.worker.serviceAccountName" -}}
{{- if .Values.worker.serviceAccount.create }}
{{- default (printf "%s-worker" (include "ffmpeg-rtmp.fullname" .)) .Values.worker.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.worker.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference from (dict "repository" "tag" "digest") with the appVersion as default tag.
Call with (dict "image" .Values.operator.image "root" $).
*/}}
{{- define "ffmpeg-rtmp.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "ffmpeg-rtmp.operator.image" -}}
{{- include "ffmpeg-rtmp.image" (dict "image" .Values.operator.image "root" .) }}
{{- end }}

{{/*
Default worker image (--worker-image): worker.image, each empty field taken from operator.image.
*/}}
{{- define "ffmpeg-rtmp.worker.image" -}}
{{- $w := .Values.worker.image }}
{{- $o := .Values.operator.image }}
{{- $img := dict "repository" (default $o.repository $w.repository) }}
{{- if or $w.repository $w.tag $w.digest }}
{{- $_ := set $img "tag" $w.tag }}
{{- $_ := set $img "digest" $w.digest }}
{{- else }}
{{- $_ := set $img "tag" $o.tag }}
{{- $_ := set $img "digest" $o.digest }}
{{- end }}
{{- include "ffmpeg-rtmp.image" (dict "image" $img "root" .) }}
{{- end }}

{{/*
Leader election (`--leader-elect`): "true" or "". operator.leaderElection.enabled when it is a
boolean; when it is null (the default), on exactly when more than one operator replica runs.
Several replicas without it would all act at once: that is refused.
*/}}
{{- define "ffmpeg-rtmp.leaderElection.enabled" -}}
{{- $op := .Values.operator }}
{{- $explicit := ($op.leaderElection | default dict).enabled }}
{{- $many := gt (int $op.replicaCount) 1 }}
{{- if kindIs "bool" $explicit }}
{{- if and $many (not $explicit) $op.enabled }}
{{- fail (printf "operator.replicaCount=%d needs leader election: leave operator.leaderElection.enabled null or set it to true" (int $op.replicaCount)) }}
{{- end }}
{{- if $explicit }}true{{ end }}
{{- else if $many }}true{{ end }}
{{- end }}

{{/*
Name of the leader-election Lease: fixed in the operator (there is no flag for it), in
--leader-election-namespace, which the chart sets to the release namespace.
*/}}
{{- define "ffmpeg-rtmp.leaderElection.leaseName" -}}
ffmpeg-rtmp-operator
{{- end }}

{{/*
Namespace of an optional monitoring object: its own value or the release namespace.
*/}}
{{- define "ffmpeg-rtmp.namespaceOr" -}}
{{- default .root.Release.Namespace .namespace }}
{{- end }}

{{/*
Namespaces that get the worker ServiceAccount + Role, as a JSON list (use with fromJsonArray):
watchNamespaces when set, else the release namespace plus the namespaces of workerPools;
plus worker.extraNamespaces. Sorted, without duplicates.
*/}}
{{- define "ffmpeg-rtmp.worker.namespaces" -}}
{{- $ns := list }}
{{- if .Values.watchNamespaces }}
{{- $ns = concat $ns .Values.watchNamespaces }}
{{- else }}
{{- $ns = append $ns .Release.Namespace }}
{{- range .Values.workerPools }}
{{- $ns = append $ns (default $.Release.Namespace .namespace) }}
{{- end }}
{{- end }}
{{- $ns = concat $ns .Values.worker.extraNamespaces }}
{{- $ns | uniq | sortAlpha | toJson }}
{{- end }}

{{/*
Pool policy lists (poolPolicy), comma-joined, with the chart's defaults for empty lists: image prefixes
default to the worker image repository (`<repo>:` and `<repo>@`), ServiceAccounts to the worker's.
*/}}
{{- define "ffmpeg-rtmp.poolPolicy.imagePrefixes" -}}
{{- if .Values.poolPolicy.allowedImagePrefixes }}
{{- join "," .Values.poolPolicy.allowedImagePrefixes }}
{{- else }}
{{- $repo := default .Values.operator.image.repository .Values.worker.image.repository }}
{{- printf "%s:,%s@" $repo $repo }}
{{- end }}
{{- end }}

{{/*
RuntimeClasses and pull secrets pools may name, as a JSON list: the listed ones and the chart's own
(worker.runtimeClassByAccelerator, worker.imagePullSecrets), which the operator uses for pools without one.
*/}}
{{- define "ffmpeg-rtmp.poolPolicy.runtimeClasses" -}}
{{- concat .Values.poolPolicy.allowedRuntimeClasses (values .Values.worker.runtimeClassByAccelerator | sortAlpha) | uniq | toJson }}
{{- end }}

{{- define "ffmpeg-rtmp.poolPolicy.imagePullSecrets" -}}
{{- $names := list }}
{{- range .Values.worker.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- concat .Values.poolPolicy.allowedImagePullSecrets $names | uniq | toJson }}
{{- end }}

{{- define "ffmpeg-rtmp.poolPolicy.serviceAccounts" -}}
{{- if .Values.poolPolicy.allowedServiceAccounts }}
{{- join "," .Values.poolPolicy.allowedServiceAccounts }}
{{- else }}
{{- include "ffmpeg-rtmp.worker.serviceAccountName" . }}
{{- end }}
{{- end }}
