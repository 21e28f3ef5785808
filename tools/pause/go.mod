module github.com/ffmpeg-rtmp/ffmpeg-rtmp/tools/pause

go 1.26.0
