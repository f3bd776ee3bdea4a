/* The widget files inside the .so: WS_WIDGET_HTML and WS_WIDGET_JS are the
 * paths the Makefile passes (the real files, or generated placeholders). */
    .section .rodata
    .balign 16
    .globl ws_widget_html
    .hidden ws_widget_html
ws_widget_html:
    .incbin WS_WIDGET_HTML
    .globl ws_widget_html_end
    .hidden ws_widget_html_end
ws_widget_html_end:
    .byte 0
    .balign 16
    .globl ws_widget_js
    .hidden ws_widget_js
ws_widget_js:
    .incbin WS_WIDGET_JS
    .globl ws_widget_js_end
    .hidden ws_widget_js_end
ws_widget_js_end:
    .byte 0
    .section .note.GNU-stack,"",@progbits
