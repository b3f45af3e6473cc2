declare module 'mailsplit' {
  export class Headers {
    constructor(headers: Buffer | string);
    get(key: string): string[];
    getDecoded(key: string): { key: string; value: string }[];
    hasHeader(key: string): boolean;
  }
}
